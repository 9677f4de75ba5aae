"""The built-in protocols, declared beside them: ``register(PROTOCOLS)`` adds one entry per
protocol to the application's protocol registry (``harness.registry``). Entries are
``"module:Object"`` strings: listing protocols imports none of them.
"""

from __future__ import annotations

from faceeval.registry import Registry


def register(protocols: Registry) -> None:
    """Add the built-in protocols to ``protocols``."""
    protocols.register("demo", "protocols.demo:DemoProtocol",
                       description="real faces shipped with the repo (~30 identities), one pair per image")
    protocols.register("folder", "protocols.folder:FolderProtocol",
                       description="any folder of face photos (optionally one subfolder per identity)")
    protocols.register("celebahq", "protocols.celebahq:CelebAHQProtocol",
                       description="CodeSwap's CelebA-HQ set: 1,000 distinct identities, 1,000 pairs "
                                   "(--root, the user's copy)",
                       aliases=("celeba-hq",))
    protocols.register("ffpp", "protocols.ffpp:FFppProtocol",
                       description="CodeSwap's FF++ set: 10 frames x 1,000 videos, 10,000 pairs "
                                   "(--root, the user's copy)",
                       aliases=("ff++", "faceforensics"))
