"""A minimal third-party harness plugin: one method, declared by an entry point."""
