"""Backbones in and out of other libraries' formats (Hugging Face transformers: `dinov3_us.interop.hf`)."""
