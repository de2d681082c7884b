"""Student-side model pieces. Importing this package registers the `lavit_sdpa` attention."""

from lavit.models import attention as _attention  # noqa: F401  (registers lavit_sdpa)
