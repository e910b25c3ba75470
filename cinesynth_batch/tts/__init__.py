"""Text to speech backends: ``espeak`` (libespeak-ng from the espeakng-loader wheel, in process)
and ``qwen3-tts`` (the qwen-tts package, in its own worker environment; see docs/tts-worker.md).

Nothing here imports torch.
"""

def espeak_revision() -> str:
    """What decides espeak's sound: the wheel's version (it fixes the library and its data)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"espeakng-loader {version('espeakng-loader')}"
    except PackageNotFoundError:
        return "espeakng-loader missing"
