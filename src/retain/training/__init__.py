"""Training hosts that call strategy hooks: a plain PyTorch loop and a Hugging Face callback."""
