"""Every annotation, label, volume and container name the webhook reads or writes, defined once."""

from typing import Final

PREFIX: Final = "cache.kserve.io/"

# Our annotations (see the annotation table in docs/annotations-and-policy.md).
ENABLED: Final = PREFIX + "enabled"
POLICY: Final = PREFIX + "policy"
PVC: Final = PREFIX + "pvc"
STORAGE_URI: Final = PREFIX + "storage-uri"
SECRET: Final = PREFIX + "secret"
REVISION: Final = PREFIX + "revision"
SERVING_MODE: Final = PREFIX + "serving-mode"
FS_GROUP: Final = PREFIX + "fs-group"
POD_OVERRIDES: Final = PREFIX + "pod-overrides"
STATUS: Final = PREFIX + "status"
REFRESH: Final = PREFIX + "refresh"
DIGEST: Final = PREFIX + "digest"
PREFETCH: Final = PREFIX + "prefetch"
READ_ONLY: Final = PREFIX + "read-only"
ON_MISS: Final = PREFIX + "on-miss"

# Keys a pod may be allowed to set through `pod-overrides` (the starred keys of the design).
OVERRIDABLE: Final = frozenset({"pvc", "secret", "serving-mode"})

# KServe's names.
KSERVE_SOURCE_URI: Final = "internal.serving.kserve.io/storage-initializer-sourceuri"
KSERVE_LOCALMODEL_LABEL: Final = "internal.serving.kserve.io/localmodel"
COMPONENT_LABEL: Final = "component"
ISVC_LABEL: Final = "serving.kserve.io/inferenceservice"
PREDICTOR: Final = "predictor"
STORAGE_INITIALIZER: Final = "storage-initializer"
KSERVE_CONTAINER: Final = "kserve-container"
PROVISION_VOLUME: Final = "kserve-provision-location"
MODEL_MOUNT_PATH: Final = "/mnt/models"
# `storage.kserve.io/readonly: "false"`: the model server writes into its model folder.
KSERVE_READONLY: Final = "storage.kserve.io/readonly"
# A `storage:` spec: KServe's source-URI annotation holds this placeholder scheme and its pod
# mutator puts the real URI in the first argument of its storage-initializer.
KSERVE_STORAGE_PLACEHOLDER: Final = "<scheme-placeholder>"
# Istio CNI: the uid KServe gives its storage-initializer so its traffic bypasses the proxy.
KSERVE_INITIALIZER_UID: Final = "serving.kserve.io/storage-initializer-uid"

# What we inject.
CACHE_VOLUME: Final = "kserve-cache"
CACHE_MOUNT_PATH: Final = "/cache"
FETCH_COMMAND: Final = "kserve-cache"
