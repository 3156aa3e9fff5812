"""Celery task messages as the broker holds them: a Redis list, or files in the filesystem queue.

Both transports keep kombu's JSON envelope; its body (base64) is Celery's protocol-2 JSON body
``[args, kwargs, embed]``. Tests read it to check that payloads hold ids only.
"""

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis


@dataclass(frozen=True)
class TaskMessage:
    task: str
    content_type: str
    routing_key: str
    args: list[Any]
    kwargs: dict[str, Any]


def decode(raw: bytes | str) -> TaskMessage:
    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    return TaskMessage(
        task=envelope["headers"]["task"],
        content_type=envelope["content-type"],
        routing_key=envelope["properties"]["delivery_info"]["routing_key"],
        args=args,
        kwargs=kwargs,
    )


def redis_lists(client: redis.Redis) -> dict[str, list[TaskMessage]]:
    """Every list in the Redis database, by key, decoded; kombu keeps one list per queue."""
    lists: dict[str, list[TaskMessage]] = {}
    for key in client.keys("*"):
        if client.type(key) in (b"list", "list"):
            name = key.decode() if isinstance(key, bytes) else str(key)
            lists[name] = [decode(raw) for raw in client.lrange(key, 0, -1)]
    return lists


def folder_messages(queue_dir: Path, queue: str) -> list[TaskMessage]:
    """Messages waiting for ``queue`` in the filesystem transport's folder, by file name (a
    millisecond clock first: messages sent within one millisecond come in any order)."""
    files = sorted((queue_dir / "messages").glob(f"*.{queue}.msg"))
    return [decode(path.read_bytes()) for path in files]


def forget_folder_bindings() -> None:
    """Forget the exchanges and bindings kombu's filesystem transport declared in this process.

    That transport keeps them in one process-wide state and declares each only once, so a second
    queue folder in the same process (the next test's) never gets its routing table written and
    every message sent to it is dropped. A deployment uses one folder per process and never sees
    this; tests that each have their own folder call this first.
    """
    from kombu.transport.filesystem import Transport

    Transport.global_state.clear()  # type: ignore[no-untyped-call]


def clear_queues(client: redis.Redis) -> None:
    """Delete every message, keeping kombu's ``_kombu.binding.*`` routing tables.

    A producer declares its queues once per pooled connection; if the tables went (FLUSHDB) while
    that connection lives, kombu finds no route and drops the next messages without a word.
    """
    for key in client.keys("*"):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if not name.startswith("_kombu."):
            client.delete(key)


@contextmanager
def clean_redis(url: str) -> Iterator[redis.Redis]:
    """A client for the Redis database at ``url``, its queues emptied before and after."""
    client = redis.Redis.from_url(url)
    clear_queues(client)
    try:
        yield client
    finally:
        clear_queues(client)
        client.close()
