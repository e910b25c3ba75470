"""Wan2.2-S2V (speech-to-video) support.

The transformer lives in :mod:`.transformer` (``WanS2VTransformer3DModel``); it is not imported
here so that importing this package stays free of torch.
"""
