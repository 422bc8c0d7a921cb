"""Loading the cluster config file and re-reading it when it changes (an edge: files).

A ConfigMap update arrives as a symlink swap, so the file is re-read when the identity
(inode, size, mtime) of what the path resolves to changes. A file that fails validation is
reported and the last good config stays in force.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from webhook.clusterconfig import ClusterConfig, ConfigError, parse_config

logger = logging.getLogger(__name__)


def load_config(path: Path) -> ClusterConfig:
    """Read and validate a config file; raise ConfigError with the path and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_config(text, source=str(path))


def with_fetcher_image(config: ClusterConfig, image: str | None) -> ClusterConfig:
    """The config with `image` as the init container's image, unless the file names one itself
    (`serve --fetcher-image`, set from the Deployment, so a kustomize `images:` entry changes
    it; an explicit `initContainer.image` in the file still wins)."""
    if not image or "image" in config.initContainer.model_fields_set:
        return config
    if len(image) > 512 or any(c.isspace() for c in image):
        raise ConfigError(f"fetcher image {image!r}: not an image reference")
    template = config.initContainer.model_copy(update={"image": image})
    return config.model_copy(update={"initContainer": template})


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows the ConfigMap's symlinks  # noqa: PTH116
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigStore:
    """The config in force; `refresh()` re-reads the file when it changed."""

    def __init__(
        self,
        path: Path | None,
        *,
        initial: ClusterConfig | None = None,
        fetcher_image: str | None = None,
    ) -> None:
        self.path = path
        self.fetcher_image = fetcher_image
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        if path is None:
            self._config = with_fetcher_image(initial or ClusterConfig(), fetcher_image)
            self._identity: tuple[int, int, int, int] | None = None
        else:
            self._identity = _identity(path)
            # a bad file at start is fatal
            self._config = with_fetcher_image(load_config(path), fetcher_image)

    @property
    def config(self) -> ClusterConfig:
        return self._config

    def refresh(self) -> bool | None:
        """True: reloaded; False: the new file is bad (old config kept); None: unchanged."""
        if self.path is None:
            return None
        identity = _identity(self.path)
        if identity == self._identity:
            return None
        self._identity = identity
        try:
            self._config = with_fetcher_image(load_config(self.path), self.fetcher_image)
        except ConfigError as exc:
            self.failures += 1
            self.last_error = str(exc)
            logger.error("config not reloaded, keeping the last good one: %s", exc)
            return False
        self.reloads += 1
        self.last_error = None
        logger.info("config reloaded from %s", self.path)
        return True
