"""``bisik server``: run the server, or mint an invite code."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

import uvicorn

from bisik._heap import settle_heap
from bisik.server import ServerConfig, create_app
from bisik.server._uvicorn import uvicorn_options


def add_parser(sub: Any) -> None:
    server = sub.add_parser("server", help="run a Bisik server (or: server invite)")
    server.add_argument(
        "action", nargs="?", choices=["run", "invite"], default="run", help="default: run"
    )
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8765)
    server.add_argument("--data", type=Path, default=Path("bisik-data"), help="data directory")
    server.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL, e.g. postgresql+asyncpg://user@host/db (default: SQLite in --data)",
    )
    server.add_argument("--invite-only", action="store_true", help="registration needs an invite")
    server.add_argument("--redis-url", default=None, help="Redis for fan-out across processes")
    server.add_argument(
        "--push-contact",
        default="mailto:admin@localhost",
        help="VAPID contact sent to Web Push services (mailto: or https: URL)",
    )
    server.add_argument(
        "--push-interval", type=int, default=30, help="seconds between pushes to one device"
    )
    blobs = server.add_argument_group("attachments (encrypted blobs)")
    blobs.add_argument("--blob-dir", type=Path, help="local blob directory (default: DATA/blobs)")
    blobs.add_argument(
        "--s3-bucket", help="store blobs in this S3-compatible bucket (AWS_* env credentials)"
    )
    blobs.add_argument("--s3-endpoint-url", help="e.g. http://127.0.0.1:9000 for MinIO")
    blobs.add_argument("--s3-region", default=None)
    blobs.add_argument(
        "--max-file-mb", type=int, default=2048, help="largest attachment, MiB (default 2048)"
    )
    blobs.add_argument(
        "--quota-mb", type=int, default=10240, help="attachments per account, MiB (default 10240)"
    )
    blobs.add_argument(
        "--blob-days", type=int, default=30, help="days a blob is kept after upload (default 30)"
    )
    limits = ServerConfig(data_dir=Path("."))
    server.add_argument(
        "--max-registrations-per-min",
        type=int,
        default=limits.registrations_per_ip_per_min,
        help="accounts and devices added per minute from one IP address",
    )
    server.add_argument(
        "--max-sign-ins-per-min",
        type=int,
        default=limits.sign_ins_per_ip_per_min,
        help="challenges and tokens asked for per minute from one IP address",
    )
    server.add_argument(
        "--max-messages-per-s",
        type=float,
        default=limits.messages_per_device_per_s,
        help=f"sends per second by one device (bursts of {limits.message_burst})",
    )
    server.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=limits.max_connections_per_ip,
        help="sockets open at once from one IP address",
    )
    server.add_argument(
        "--limit-loopback",
        action="store_true",
        help="apply the limits to 127.0.0.1 and ::1 too (exempt by default)",
    )


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
    from bisik.server._db import create_engine, migrate
    from bisik.server.handlers import AccountsHandler
    from bisik.server.stores import AccountStore

    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(config.resolved_database_url)
    try:
        await migrate(engine)
        return await AccountsHandler(config, AccountStore(engine)).create_invite()
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
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
