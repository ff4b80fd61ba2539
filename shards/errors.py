"""The one exception type for user mistakes, and the one line a user is told for each kind of failure."""

from __future__ import annotations

import errno

# what installs a missing import: a dependency itself, or the extra of pyproject.toml that brings it
MISSING_HINTS = {
    "nvidia": "nvidia-dali-cuda120",
    "torch": "torch",
    "webdataset": "webdataset",
    "simplejpeg": "simplejpeg",
    "matplotlib": "matplotlib",
    "skimage": "scikit-image",
    "distributed": "'alexnet-wds[cluster]'",
    "s3fs": "'alexnet-wds[s3]'",
    "gcsfs": "'alexnet-wds[gcs]'",
}
CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError")


class UserError(Exception):
    """Bad input or usage: the message says what is wrong and what to do."""


def explain(e: BaseException) -> tuple[str, int] | None:
    """(the line for stderr, the exit code) for a failure a user can fix; None for a bug (keep the traceback)."""
    if isinstance(e, UserError):
        return f"error: {e}", 2
    if isinstance(e, KeyboardInterrupt):  # the command may have said what it kept
        return str(e) or "interrupted: finished shards/checkpoints are kept; rerun the same command to continue", 130
    if isinstance(e, ModuleNotFoundError):
        package = MISSING_HINTS.get((e.name or "").split(".")[0])
        if package:
            return (
                f"error: {e.name} is not installed: run `make test` or `make demo` once (they set up .venv), "
                f"or `pip install {package}`"
            ), 2
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"error: no space left for {e.filename or 'the output'} ({e.strerror}): free space and rerun the "
            "same command; finished work is kept, half-written files were removed"
        ), 2
    if isinstance(e, PermissionError):  # an object store's AccessDenied arrives as this
        return f"error: permission denied: {e}: check that the credentials may read/write there", 2
    if type(e).__name__ in CREDENTIAL_ERRORS:
        return (
            f"error: no credentials for the object store ({e}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (S3; AWS_ENDPOINT_URL for MinIO/Ceph), or "
            "GOOGLE_APPLICATION_CREDENTIALS (GCS)"
        ), 2
    return None
