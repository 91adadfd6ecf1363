"""Run configuration: `load_config(config_file, overrides)` validated against `ssl_default_config.yaml`."""

from dinov3_us.configs.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    get_default_config,
    load_config,
    parse_dotlist,
    write_config,
)

__all__ = ["DEFAULT_CONFIG_PATH", "Config", "get_default_config", "load_config", "parse_dotlist", "write_config"]
