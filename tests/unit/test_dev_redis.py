"""`warmpool dev` given a REDIS_URL of its own: it asks Redis the way the service's processes do, so a
``sentinel://`` URL is reached through its sentinels (a real redis-server and one real sentinel here)."""

import socket
import subprocess

from app.devstack import dev_redis_port, redis_answers, redis_server_command, shown
from app.processes import free_port, wait_until
from tests.conftest import RedisServer

MASTER = "warmpool"


def test_warmpool_dev_finds_the_redis_its_sentinels_name(tmp_path):
    server, port = RedisServer(free_port()), free_port()
    server.start()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor {MASTER} 127.0.0.1 {server.port} 1\n")
    sentinel = subprocess.Popen([redis_server_command(0, tmp_path)[0], str(config), "--sentinel"],
                                stdout=subprocess.DEVNULL)
    try:
        behind = {"REDIS_URL": f"sentinel://127.0.0.1:{port}/0", "REDIS_SENTINEL_MASTER": MASTER}
        wait_until(lambda: redis_answers(behind), timeout=10, message="Redis through its sentinel")
        assert not redis_answers({**behind, "REDIS_SENTINEL_MASTER": "another"})  # no such master: no answer
        assert redis_answers({"REDIS_URL": server.url})
    finally:
        sentinel.kill()
        sentinel.wait(timeout=10)
        server.stop(kill=True)


def test_the_dev_redis_takes_its_last_port_again_while_it_is_free(tmp_path):
    first = dev_redis_port(tmp_path)
    assert dev_redis_port(tmp_path) == first  # a restart: the banner's REDIS_URL still reaches it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        moved = dev_redis_port(tmp_path)
    assert moved != first and dev_redis_port(tmp_path) == moved


def test_a_redis_url_is_shown_with_every_password_masked():
    assert shown("redis://:p@ss@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert shown("sentinel://:pw@h1:26379;sentinel://:pw@h2:26379/0") == \
        "sentinel://:***@h1:26379;sentinel://:***@h2:26379/0"
    assert shown("redis://h:6379/0?password=pw&db=1") == "redis://h:6379/0?password=***&db=1"
    assert shown("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_a_bad_kept_redis_port_is_replaced_by_a_free_one(tmp_path):
    for bad in ("²", "99999", "0", "80", "port"):
        (tmp_path / "redis-port").write_text(bad)
        port = dev_redis_port(tmp_path)
        assert 1024 <= port <= 65535 and (tmp_path / "redis-port").read_text().strip() == str(port)
