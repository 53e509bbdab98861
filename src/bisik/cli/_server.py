"""``bisik server``: run the server, or mint an invite code."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvicorn

from bisik._heap import settle_heap
from bisik.cli._session import Session
from bisik.server import ServerConfig, create_app
from bisik.server._db import create_engine, migrate
from bisik.server._uvicorn import uvicorn_options
from bisik.server.handlers import AccountsHandler
from bisik.server.stores import AccountStore


def config_from(args: argparse.Namespace) -> ServerConfig:
    url = args.database_url
    if url and url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    return ServerConfig(
        data_dir=args.data,
        database_url=url,
        invite_only=args.invite_only,
        redis_url=args.redis_url,
        push_contact=args.push_contact,
        push_interval_s=max(1, args.push_interval),
        blob_dir=args.blob_dir,
        s3_bucket=args.s3_bucket,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_region=args.s3_region,
        # The cipher adds 16 bytes per 64 KiB chunk to a file's size.
        max_blob_bytes=max(1, args.max_file_mb) * 1024 * 1040,
        blob_quota_bytes=max(1, args.quota_mb) * 1024 * 1024,
        blob_ttl_s=max(1, args.blob_days) * 86400,
        registrations_per_ip_per_min=max(1, args.max_registrations_per_min),
        sign_ins_per_ip_per_min=max(1, args.max_sign_ins_per_min),
        messages_per_device_per_s=max(0.01, args.max_messages_per_s),
        max_connections_per_ip=max(1, args.max_connections_per_ip),
        rate_limit_exempt=() if args.limit_loopback else ServerConfig.rate_limit_exempt,
    )


async def _mint_invite(config: ServerConfig) -> str:
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(config.resolved_database_url)
    try:
        await migrate(engine)
        return await AccountsHandler(config, AccountStore(engine)).create_invite()
    finally:
        await engine.dispose()


def run(args: argparse.Namespace, session: Session) -> int:
    """Serve until stopped, in its own event loop (uvicorn picks uvloop), or print an invite."""
    config = config_from(args)
    if args.action == "invite":
        code = asyncio.run(_mint_invite(config))
        if args.json:
            print(f'{{"invite": "{code}"}}')
        else:
            print(code)
        return 0
    logging.getLogger("bisik").setLevel(logging.INFO)
    print(f"bisik server on http://{args.host}:{args.port} (data: {config.data_dir})", flush=True)
    app = create_app(config)
    settle_heap()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        **uvicorn_options(config.max_body_bytes),
    )
    return 0
