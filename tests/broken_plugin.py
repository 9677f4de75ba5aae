"""A method plugin that fails at import (tests/bad_inputs.py registers it as a plugin):
`harness list methods` must show it broken, `-m all` skip it, naming it."""

raise RuntimeError("this plugin needs a library that is not installed")
