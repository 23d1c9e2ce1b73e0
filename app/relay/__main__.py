"""``python -m app.relay``: serve the Feishu relay with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from app.relay.config import RelayConfig
from app.relay.server import create_relay_app
from app.settings import Settings


def main() -> None:
    settings = Settings()
    config = RelayConfig.from_settings(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_relay_app(config),
        host=config.host,
        port=config.port,
        log_level=settings.log_level,
        access_log=False,
    )


if __name__ == "__main__":
    main()
