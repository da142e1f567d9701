"""A real Apache Kafka broker for tests: one KRaft node (broker + controller), no Docker.

The jars come from Maven Central through ``infra/kafka/pom.xml`` (``make setup`` copies them into
``.kafka/lib``). :class:`KafkaBroker` writes a ``server.properties`` with loopback listeners on
free ports and settings for a fast single-node start, formats the log directory
(``kafka.tools.StorageTool format``), starts ``java -cp '.kafka/lib/*' kafka.Kafka`` and waits
until the broker answers; ``stop()`` ends it (SIGTERM, then SIGKILL). ``restart()`` keeps the log
directory, so topics, records and committed offsets survive, as on a real cluster.

Run one by hand: ``.venv/bin/python -m tests.kafka_broker`` (prints the bootstrap address);
SIGTERM or Ctrl-C stops its JVM and removes its temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LIB = Path(os.environ.get("SPEEDLAYER_KAFKA_LIB", ROOT / ".kafka" / "lib"))
HEAP = os.environ.get("SPEEDLAYER_KAFKA_HEAP", "-Xmx512m")
GRACE_S = 15.0  # `python -m tests.kafka_broker`: how long a stopping JVM may take before SIGKILL

# Fast, single-node settings: one replica everywhere, no rebalance delay, small internal topics.
SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "num.partitions": "4",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "auto.create.topics.enable": "false",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "2",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "log.flush.interval.messages": "9223372036854775807",
    "log.segment.bytes": str(64 * 1024 * 1024),
    "delete.topic.enable": "true",
}

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


class KafkaBrokerError(RuntimeError):
    """The broker cannot be set up or did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def java_command() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaBrokerError(
            "java not found: the Kafka broker needs a JRE 17+ (Debian: apt-get install "
            "openjdk-17-jre-headless; `make setup` installs it)"
        )
    return java


def check_jars() -> None:
    if not any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
        raise KafkaBrokerError(
            f"Kafka jars not found in {KAFKA_LIB}: run `make setup` "
            "(mvn -q -f infra/kafka/pom.xml dependency:copy-dependencies)"
        )


def missing_prerequisite() -> str | None:
    """Why a broker cannot be started on this machine (no Java, no jars), or None."""
    try:
        java_command()
        check_jars()
    except KafkaBrokerError as exc:
        return str(exc)
    return None


class KafkaBroker:
    """One KRaft broker+controller on loopback, data in ``workdir``: the client port ``port``
    (default: a free one), the controller's on a free one."""

    def __init__(self, workdir: Path, *, log_level: str = "WARN", port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.cluster_id = uuid.uuid4().hex[:22]  # any 16 bytes, base64 without padding: 22 chars
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_s: float | None = None
        self._formatted = False

    @property
    def config(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.workdir / "broker.log"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            java_command(),
            HEAP,
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            str(KAFKA_LIB / "*"),
            main,
            *args,
        ]

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            **SETTINGS,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.workdir / "data"),
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.workdir / "log4j2.properties").write_text(
            LOG4J2.format(log=self.log_file, level=self.log_level)
        )

    def format(self) -> None:
        """Write the config and format the log directory (once)."""
        check_jars()
        self._write_config()
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.config),
            "--cluster-id",
            self.cluster_id,
            "--ignore-formatted",
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"kafka StorageTool format failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        self._formatted = True

    def start(self, timeout_s: float = 90) -> None:
        """Start the broker and wait until it accepts metadata requests."""
        if not self._formatted:
            self.format()
        began = time.monotonic()
        with open(self.workdir / "broker.err", "ab") as err:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config)), stdout=subprocess.DEVNULL, stderr=err
            )
        try:
            self._wait_ready(began + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - began

    def _wait_ready(self, deadline: float) -> None:
        """Ready = the port accepts connections and the broker is registered and unfenced
        (a Metadata answer lists it). Probed in a thread with its own event loop, so this works
        from sync code and from inside a running loop alike."""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise KafkaBrokerError(
                    f"the Kafka broker exited with {self.proc.returncode}:\n{self.tail_log()}"
                )
            if time.monotonic() > deadline:
                raise KafkaBrokerError(
                    f"the Kafka broker did not start in time:\n{self.tail_log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        result: list[BaseException | None] = []
        thread = threading.Thread(
            target=lambda: result.append(_run_probe(self.bootstrap, deadline)), daemon=True
        )
        thread.start()
        thread.join(max(1.0, deadline - time.monotonic() + 5))
        if not result or result[0] is not None:
            raise KafkaBrokerError(
                f"the Kafka broker did not become ready: {result[0] if result else 'timeout'}"
                f"\n{self.tail_log()}"
            )

    def stop(self, timeout_s: float = 30) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, timeout_s: float = 90) -> None:
        self.stop()
        self.start(timeout_s)

    def tail_log(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _run_probe(bootstrap: str, deadline: float) -> BaseException | None:
    try:
        asyncio.run(_probe(bootstrap, deadline))
    except BaseException as exc:
        return exc
    return None


async def _probe(bootstrap: str, deadline: float) -> None:
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if cluster.get("brokers"):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        finally:
            await admin.close()
        await asyncio.sleep(0.1)


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived: unwind, stopping the broker and removing its folder."""


def _stop_on_signal(signum: int, _frame: object) -> None:
    # Raised once: the cleanup that follows must not be interrupted by a second signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    """Run a broker until SIGTERM or SIGINT (Ctrl-C), then stop its JVM (SIGTERM, SIGKILL after
    a grace) and remove its temporary folder, also when the signal comes during the start."""
    parser = argparse.ArgumentParser(description="a single-node Kafka broker on loopback")
    parser.add_argument("--port", type=int, help="client port (default: a free one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="kafka-"))
    broker = KafkaBroker(workdir, log_level="INFO", port=args.port)
    code = 0
    try:
        broker.start()
        pid = broker.proc.pid if broker.proc is not None else None
        print(f"Kafka broker at {broker.bootstrap} (data in {workdir}, JVM pid {pid}); started "
              f"in {broker.start_s:.1f} s. Ctrl-C stops it.", flush=True)  # fmt: skip
        while True:
            signal.pause()
    except Stopped:
        pass
    except KafkaBrokerError as exc:
        print(exc, file=sys.stderr, flush=True)
        code = 1
    finally:
        broker.stop(timeout_s=GRACE_S)
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
