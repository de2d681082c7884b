"""LaViT: distil a vision-language teacher into a student that looks where the teacher looks."""

__version__ = "0.1.0"
