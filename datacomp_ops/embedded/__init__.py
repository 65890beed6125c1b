"""The stand-ins the product runs by default when no real model or target set is configured: small CLIP
models trained here, and the image-based baseline's targets. Product code; it never imports synthetic/."""
