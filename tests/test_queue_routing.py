"""The producer on the real Redis broker (database 13): each task lands in its own queue only, the
body is JSON holding the id and nothing else, and a broker that hangs makes a send fail, not block.
"""

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError

from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_DELIVER, TASK_PROCESS_JOB
from radlight.queue import TaskProducer
from radlight.settings import Settings
from tests.brokers import TaskMessage, clean_redis, redis_lists


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    with clean_redis(redis_url) as client:
        yield client


@pytest.fixture
def producer(tmp_path: Path, redis_url: str, broker: redis.Redis) -> Iterator[TaskProducer]:
    queue = TaskProducer(Settings(data_dir=tmp_path, broker_url=redis_url))
    try:
        yield queue
    finally:
        queue.close()


def only_list(client: redis.Redis) -> tuple[str, list[TaskMessage]]:
    lists = redis_lists(client)
    assert len(lists) == 1, lists
    ((name, messages),) = lists.items()
    return name, messages


def test_enqueue_job_lands_in_the_inference_queue_only(
    producer: TaskProducer, broker: redis.Redis
) -> None:
    producer.enqueue_job(7)
    producer.enqueue_job(8)

    name, messages = only_list(broker)
    assert name == QUEUE_INFERENCE
    assert broker.llen(QUEUE_DELIVERY) == 0
    for message, job_id in zip(
        sorted(messages, key=lambda m: m.kwargs["job_id"]), (7, 8), strict=True
    ):
        assert message.task == TASK_PROCESS_JOB
        assert message.content_type == "application/json"
        assert message.routing_key == QUEUE_INFERENCE
        assert (message.args, message.kwargs) == ([], {"job_id": job_id})


def test_enqueue_delivery_lands_in_the_delivery_queue_only(
    producer: TaskProducer, broker: redis.Redis
) -> None:
    producer.enqueue_delivery(11)

    name, (message,) = only_list(broker)
    assert name == QUEUE_DELIVERY
    assert broker.llen(QUEUE_INFERENCE) == 0
    assert message.task == TASK_DELIVER
    assert message.content_type == "application/json"
    assert message.routing_key == QUEUE_DELIVERY
    assert (message.args, message.kwargs) == ([], {"delivery_id": 11})


def test_both_kinds_side_by_side_stay_apart(producer: TaskProducer, broker: redis.Redis) -> None:
    producer.enqueue_job(1)
    producer.enqueue_delivery(2)
    producer.enqueue_job(3)

    lists = redis_lists(broker)
    assert set(lists) == {QUEUE_INFERENCE, QUEUE_DELIVERY}
    assert sorted(m.kwargs["job_id"] for m in lists[QUEUE_INFERENCE]) == [1, 3]
    assert [m.kwargs for m in lists[QUEUE_DELIVERY]] == [{"delivery_id": 2}]


def test_payloads_are_validated_before_sending(producer: TaskProducer, broker: redis.Redis) -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        producer.enqueue_job(0)
    assert redis_lists(broker) == {}


# Each way the producer reaches the broker: sending, and connecting ahead (TaskProducer.connect).
REACHES_BROKER: dict[str, Callable[[TaskProducer], None]] = {
    "send": lambda producer: producer.enqueue_job(1),
    "connect": TaskProducer.connect,
}


@pytest.mark.parametrize("reach", REACHES_BROKER.values(), ids=REACHES_BROKER.keys())
def test_closed_broker_port_fails_at_once(
    tmp_path: Path, reach: Callable[[TaskProducer], None]
) -> None:
    producer = TaskProducer(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0"))
    try:
        with pytest.raises(OperationalError, match="refused"):
            reach(producer)
    finally:
        producer.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reach", REACHES_BROKER.values(), ids=REACHES_BROKER.keys())
def test_broker_that_never_answers_makes_the_send_fail_instead_of_hanging(
    tmp_path: Path, reach: Callable[[TaskProducer], None]
) -> None:
    """A peer that accepts the TCP connection and then says nothing (a hung Redis): without socket
    timeouts kombu would wait forever, and the assembler thread with it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        producer = TaskProducer(
            Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{port}/0"), timeout_s=0.5
        )
        try:
            with pytest.raises(OperationalError, match=r"(?i)timeout"):
                reach(producer)
        finally:
            producer.close()


def test_connect_declares_both_queues_before_anything_is_sent(
    producer: TaskProducer, broker: redis.Redis
) -> None:
    """kombu's Redis transport records a declared queue's binding under ``_kombu.binding.*``;
    nothing is queued by connecting."""
    assert not broker.keys("_kombu.binding.*")
    producer.connect()
    bindings = {
        key.decode() if isinstance(key, bytes) else key for key in broker.keys("_kombu.binding.*")
    }
    assert bindings == {f"_kombu.binding.{QUEUE_INFERENCE}", f"_kombu.binding.{QUEUE_DELIVERY}"}
    assert redis_lists(broker) == {}
    producer.enqueue_job(5)  # and the connection it made sends
    assert [m.kwargs for m in redis_lists(broker)[QUEUE_INFERENCE]] == [{"job_id": 5}]
