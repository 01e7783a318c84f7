"""The one error tree. Each error carries a stable code that lands in the failed manifest."""

from __future__ import annotations


class BucketbrushError(Exception):
    """Base class. ``code`` is stable and machine-readable; the message is for people."""

    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class JobError(BucketbrushError):
    """The job cannot succeed as submitted; retrying the same input would fail again."""

    code = "job_error"


class InvalidImage(JobError):
    code = "invalid_image"


class UnsupportedFormat(InvalidImage):
    """An image container this runner has no decoder for (HEIC); the message names what to upload instead."""

    code = "unsupported_format"


class InvalidKey(JobError):
    """An upload under inbox/ whose key breaks a rule ('..' segments, control characters):
    recorded under the id derived from its identity, as no job could run from it."""

    code = "invalid_key"


class EmptyInput(JobError):
    code = "empty_input"


class ImageTooLarge(JobError):
    code = "image_too_large"


class InputTooLarge(JobError):
    code = "input_too_large"


class InputMissing(JobError):
    code = "input_missing"


class UnknownRecipe(JobError):
    code = "unknown_recipe"


class InvalidParams(JobError):
    code = "invalid_params"


class InvalidSpec(JobError):
    code = "invalid_spec"


class InvalidKeypoints(JobError):
    code = "invalid_keypoints"


class OutputTooLarge(JobError):
    code = "output_too_large"


class ImageTooSmall(JobError):
    code = "image_too_small"


class UnknownModel(JobError):
    code = "unknown_model"


class ModelUnavailable(JobError):
    """The model (or its weights) is not available on this runner; the message says what to
    configure. Not retried: another delivery to the same runner would fail the same way."""

    code = "model_unavailable"


class OutOfMemory(JobError):
    """The device ran out of memory; the runner freed its model cache and survives."""

    code = "out_of_memory"


class TimedOut(JobError):
    code = "timed_out"


class RunnerDied(JobError):
    """The job's runner died in it ``max_runner_deaths`` times (killed, out of memory, crashed):
    it is not run again, as it would likely kill the next runner too."""

    code = "runner_died"


class InvalidWebhook(JobError):
    """A per-job webhook that is not an http(s) URL, or asks for unknown events."""

    code = "invalid_webhook"


class TransientError(BucketbrushError):
    """A dependency failed (store or broker unreachable); the same job may succeed later."""

    code = "transient_error"
    retryable = True


class ConfigError(BucketbrushError):
    code = "config_error"


class StackError(BucketbrushError):
    """The local stack (``bucketbrush up``) could not start, or is not running."""

    code = "stack_error"


class JobCancelled(JobError):
    """The user asked to cancel (an object at cancel/<job_id>); the manifest says cancelled."""

    code = "cancelled"


# -- management and clients (not job failures: they never land in a manifest) -----------------

class JobNotFound(BucketbrushError):
    code = "job_not_found"


class InvalidState(BucketbrushError):
    """The job's status does not allow the operation (e.g. cancelling a finished job)."""

    code = "invalid_state"


class InvalidCursor(BucketbrushError):
    code = "invalid_cursor"


class UploadRejected(BucketbrushError):
    """The store refused a presigned upload (policy, size, expiry)."""

    code = "upload_rejected"


# -- the client API (bucketbrush/client.py) ----------------------------------------------------

class WaitTimedOut(BucketbrushError, TimeoutError):
    """``Job.wait`` gave up before the manifest was final; the job itself goes on."""

    code = "wait_timed_out"


def error_for_code(code: str, message: str) -> BucketbrushError:
    """The typed error for a failed manifest's ``error.code`` (e.g. ``invalid_image`` ->
    ``InvalidImage``); an unknown code gives a ``JobError`` that keeps the code."""
    pending: list[type[BucketbrushError]] = [BucketbrushError]
    while pending:
        cls = pending.pop()
        if cls.__dict__.get("code") == code and cls not in (BucketbrushError, JobError):
            return cls(message)
        pending += cls.__subclasses__()
    return JobError(message, code=code)


# Video uploads (the `video` recipe, gpu_runner/video.py). Each limit has its own code.
class InvalidVideo(JobError):
    """Not a video this runner reads (mp4, mov, webm, mkv, avi, gif), corrupt, truncated, or no frames."""

    code = "invalid_video"


class VideoTooLong(JobError):
    code = "video_too_long"


class VideoTooManyFrames(JobError):
    code = "video_too_many_frames"


class VideoTooLarge(JobError):
    """Frames wider or taller than the configured limit."""

    code = "video_too_large"


class VideoFpsTooHigh(JobError):
    code = "video_fps_too_high"


# Content Credentials (bucketbrush/credentials.py).
class SigningFailed(JobError):
    """Content Credentials are on and an output could not be signed: nothing is written
    unsigned. Not retried (a bad key or certificate fails the same way again)."""

    code = "signing_failed"


# Tenants (bucketbrush/tenants.py): each tenant keeps to its own prefix and its own limits.
class OutsideTenant(JobError):
    """A job names a key outside its tenant's prefix (another tenant's, or the shared layout's)."""

    code = "outside_tenant"


class QuotaExceeded(JobError):
    """A tenant's limit (jobs per hour, concurrent jobs, input bytes per day, recipes) is reached;
    the message says which and when it resets."""

    code = "quota_exceeded"


class UnknownTenant(BucketbrushError):
    code = "unknown_tenant"


# Remote inference providers (gpu_runner/providers.py).
class ProviderError(JobError):
    """A remote provider refused or failed the job (its own message follows), or did not finish
    within ``provider_deadline_s`` (still loading the model, rate limited, still running)."""

    code = "provider_error"


# Conversations (bucketbrush/conversations.py, gpu_runner/conversation.py).
class InvalidTurn(JobError):
    """A chat turn that cannot be read: not a JSON object, no message, a bad image key."""

    code = "invalid_turn"


class NoImage(JobError):
    """The turn asks to change a picture, and the conversation has none yet."""

    code = "no_image"


class NothingToUndo(JobError):
    """``undo`` with no earlier picture to go back to."""

    code = "nothing_to_undo"


class ConversationNotFound(BucketbrushError):
    code = "conversation_not_found"
