"""Why a pod was left alone: one named reason per case, shown in metrics, logs and `preview`."""

from enum import StrEnum


class SkipReason(StrEnum):
    NOT_POD_CREATE = "not-pod-create"
    EXCLUDED_NAMESPACE = "excluded-namespace"
    NOT_KSERVE = "not-kserve"
    NOT_PREDICTOR = "not-predictor"
    LOCAL_MODEL_CACHE = "local-model-cache"
    POLICY_DISABLED = "policy-disabled"
    NOT_OPTED_IN = "not-opted-in"
    OPTED_OUT = "opted-out"
    NO_STORAGE_URI = "no-storage-uri"
    PVC_URI = "pvc-uri"
    MODELCAR_URI = "modelcar-uri"
    UNSUPPORTED_URI = "unsupported-uri"
    INVALID_ANNOTATION = "invalid-annotation"
    AWAITING_KSERVE = "awaiting-kserve"
    PVC_MISSING = "pvc-missing"
    VOLUME_CONFLICT = "volume-conflict"
    NAME_CONFLICT = "name-conflict"
    FOREIGN_MODEL_MOUNT = "foreign-model-mount"
    NO_MODEL_CONTAINER = "no-model-container"
    WINDOWS_POD = "windows-pod"
    MULTIPLE_STORAGE_URIS = "multiple-storage-uris"
    CUSTOM_MODEL_PATH = "custom-model-path"


class Skip(Exception):
    """Raised inside the core when a pod is to be admitted unchanged."""

    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
