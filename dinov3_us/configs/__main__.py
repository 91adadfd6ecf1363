"""Print a resolved config: `python -m dinov3_us.configs [--config-file F] [section.key=value ...]`."""

import argparse
import sys

import yaml

from dinov3_us.configs.config import load_config
from dinov3_us.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Resolve defaults <- config file <- overrides and print the result as YAML."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config-file", default=None)
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
