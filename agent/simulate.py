"""A fleet simulator: many lightweight agents that speak the real protocol to one controller.

Each ``SimulatedAgent`` registers with a ``DeviceProfile`` and a ``Calibration``, opens a
session with a hello and sends ``TelemetrySample`` messages with synthetic, psutil-like
figures. A deploy command makes it download the artifact over the transport, check its
size and SHA-256 and report each update state up to ACTIVE. It never loads the model in
onnxruntime, so one host can simulate many devices. A lost connection or a rejected
registration makes it reconnect with the agent's jittered exponential backoff.

The agents of one worker process are coroutines on one asyncio event loop, and the
messages are the real ones of ``edgefleet.protos``: over MQTT the topics, properties and
chunk protocol of ``edgefleet.protos.mqtt`` through paho clients (``simulate_mqtt``),
over gRPC ``FleetService`` through ``grpc.aio`` (``simulate_grpc``). An agent costs one
connection and a few kilobytes, not a thread. Agents are spread over ``processes``
worker processes started with the ``spawn`` method, start evenly over ``ramp_s``, and
stop by themselves when ``duration_s`` has passed.

The ingest figures of the report come from the controller's database (``db_url``): the
telemetry rows of the simulated devices received during the run. Without a database URL
they are None, because MQTT acknowledges a sample at the broker, not after the
controller stored it, and the simulated gRPC agents ignore the ``SessionAck`` receipts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import multiprocessing
import random
import resource
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import edgefleet
from edgefleet.agent.backoff import Backoff
from edgefleet.agent.errors import ArtifactError, ControllerUnavailable, RegistrationRejected
from edgefleet.agent.transport import TransportKind
from edgefleet.agent.update import UpdateState
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id, validate_sha256
from edgefleet.profiles import CpuArch, DeviceProfile
from edgefleet.protos.mqtt import BrokerSettings
from edgefleet.protos.v1 import fleet_pb2

__all__ = [
    "DEFAULT_PROFILE",
    "AgentStats",
    "SimulatedAgent",
    "SimulationConfig",
    "SimulationReport",
    "run_simulation",
]

logger = logging.getLogger(__name__)

# A mid-range ARM board, used when the caller passes no profile.
DEFAULT_PROFILE = DeviceProfile(
    name="simulated-board",
    cpu_arch=CpuArch.AARCH64,
    cpu_cores=4,
    cpu_flags=("asimd", "neon"),
    memory_mb=4096,
    model_memory_budget_mb=256,
    latency_budget_ms=50.0,
)
# The largest number of agents one run starts.
MAX_AGENTS = 20_000
# Distinct error messages kept in a report, so a count of errors comes with its causes.
MAX_ERROR_EXAMPLES = 5
# A deployment whose download takes longer is abandoned, and retried after a reconnect.
_DOWNLOAD_TIMEOUT_S = 300.0
# How long agents still running at the deadline get to finish before they are cancelled.
_STOP_GRACE_S = 15.0
# After the agents stop, the controller may still be writing a batch of samples. So the
# database is read again until the count stays the same for _SETTLE_QUIET_S, at most
# for _SETTLE_MAX_S.
_SETTLE_QUIET_S = 0.5
_SETTLE_MAX_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Settings of one simulation run, validated on creation."""

    agents: int
    transport: TransportKind
    duration_s: float
    controller: str = ""  # host:port of the controller's gRPC endpoint
    broker: BrokerSettings | None = None  # required by the MQTT transport
    processes: int = 1
    telemetry_interval_s: float = 1.0  # until the controller sets another
    profile: DeviceProfile = DEFAULT_PROFILE
    device_prefix: str = "sim"
    db_url: str | None = None  # the controller's database, read for the ingest figures
    seed: int = 0
    ramp_s: float = 0.0  # agents start evenly over this many seconds; 0 starts all at once

    def __post_init__(self) -> None:
        object.__setattr__(self, "transport", TransportKind(self.transport))
        if not 1 <= self.agents <= MAX_AGENTS:
            raise InvalidInputError(f"agents must be 1-{MAX_AGENTS}, got {self.agents}")
        if not 1 <= self.processes <= self.agents:
            raise InvalidInputError(
                f"processes must be between 1 and the number of agents, got {self.processes}"
            )
        for name in ("duration_s", "telemetry_interval_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {value}")
        if not math.isfinite(self.ramp_s) or not 0 <= self.ramp_s < self.duration_s:
            raise InvalidInputError(
                f"ramp_s must be at least 0 and shorter than the duration, got {self.ramp_s}"
            )
        if self.transport is TransportKind.MQTT and self.broker is None:
            raise InvalidInputError("the MQTT transport needs a broker URL (--broker)")
        if self.transport is TransportKind.GRPC and not self.controller:
            raise InvalidInputError("the gRPC transport needs a controller address (--controller)")
        validate_device_id(self.device_id(self.agents - 1))

    def device_id(self, index: int) -> str:
        return f"{self.device_prefix}-{index:05d}"


@dataclasses.dataclass(slots=True)
class AgentStats:
    """Counters and times of one simulated agent, in Unix seconds on the simulator's clock."""

    device_id: str
    connected: bool = False
    telemetry_sent: int = 0
    sessions: int = 0
    errors: int = 0
    error_messages: list[str] = dataclasses.field(default_factory=list)  # the first few
    deploy_started_at: float | None = None  # issue time of the first deploy command
    active_at: float | None = None  # time the last deployment reached ACTIVE
    deployments_failed: int = 0
    online_at_end: bool = False  # its session was still open at the deadline
    # What the agent is waiting on, named in the report when it overruns the deadline.
    step: str = "starting"
    # The unfinished deployment and its state, or "" when none is.
    deploying: str = ""

    def record_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_messages) < MAX_ERROR_EXAMPLES:
            # Without the device id, agents failing alike give one example.
            self.error_messages.append(message.replace(self.device_id, "DEVICE"))


class Link(Protocol):
    """One simulated device's connection to the controller, over MQTT or gRPC."""

    commands: asyncio.Queue[fleet_pb2.Command]
    lost: asyncio.Event

    def lost_message(self) -> str: ...

    async def register(self, request: fleet_pb2.RegisterRequest) -> fleet_pb2.RegisterResponse: ...

    async def open_session(self, current_variant_id: str) -> None: ...

    async def send(self, message: fleet_pb2.AgentMessage) -> None: ...

    async def fetch(
        self, *, sha256: str, size: int, sink: Callable[[bytes], None], timeout_s: float
    ) -> None: ...

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class SimulationReport:
    """Result of a run; ``telemetry_ingested`` and the ingest figures need a database URL.

    ``ingest_msgs_per_s`` is the steady rate: rows received from one telemetry interval
    after the ramp ended until the deadline, divided by that window's length. When that
    window is under a second it divides every row by the whole run instead.
    ``ingest_lag_p99_ms`` covers every row of the run.
    """

    transport: str
    agents: int
    duration_s: float
    agents_connected: int
    agents_online_at_end: int
    reconnects: int  # sessions opened beyond each agent's first
    telemetry_sent: int
    telemetry_ingested: int | None
    ingest_msgs_per_s: float | None
    ingest_lag_p99_ms: float | None
    deploy_seconds: float | None
    agents_deployed: int
    deployments_failed: int
    errors: int
    error_examples: list[str]  # up to MAX_ERROR_EXAMPLES distinct messages

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class SimulatedAgent:
    """One simulated device; ``run`` returns its ``AgentStats`` at ``deadline`` (loop time)."""

    def __init__(self, config: SimulationConfig, index: int) -> None:
        self.config = config
        self.device_id = config.device_id(index)
        self.stats = AgentStats(self.device_id)
        self._rng = random.Random(config.seed * 1_000_003 + index)
        self._telemetry = _TelemetryModel(config.profile, self._rng)
        self._calibration = _calibration(config.profile, self._rng)
        self._interval_s = config.telemetry_interval_s
        self._variant_id = ""
        self._sha256 = ""
        # Ids of commands applied or waiting; a redelivered or re-sent one is applied once.
        self._seen: set[str] = set()

    async def run(self, deadline: float, link_factory: Callable[[str], Link]) -> AgentStats:
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial_s=0.5, max_s=5.0, rng=self._rng)
        while loop.time() < deadline:
            link = link_factory(self.device_id)
            try:
                self.stats.step = "registering"
                await self._register(link)
                backoff.reset()
                self.stats.step = "opening its session"
                await link.open_session(self._variant_id)
                self.stats.sessions += 1
                await self._run_session(link, deadline)
                # The session ran until the deadline without losing its connection.
                self.stats.online_at_end = True
            except (ControllerUnavailable, RegistrationRejected) as exc:
                self.stats.record_error(f"{type(exc).__name__}: {exc}")
                logger.debug("simulated agent %s: %s", self.device_id, exc)
            finally:
                self.stats.step = "closing its connection"
                await link.close()
            self.stats.step = "waiting to reconnect"
            await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - loop.time())))
        return self.stats

    async def _register(self, link: Link) -> None:
        response = await link.register(
            fleet_pb2.RegisterRequest(
                device_id=self.device_id,
                profile=self.config.profile.to_proto(),
                calibration=self._calibration,
                agent_version=edgefleet.__version__,
                onnxruntime_version="simulated",
                current_variant_id=self._variant_id,
            )
        )
        if response.telemetry_interval_s > 0:
            self._interval_s = response.telemetry_interval_s
        self.stats.connected = True

    async def _run_session(self, link: Link, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        deploys: asyncio.Queue[fleet_pb2.Command] = asyncio.Queue()
        worker = asyncio.create_task(self._deploy_worker(link, deploys))
        # The first sample goes out at a random point of the interval, so a fleet that
        # connected together does not send in lockstep.
        next_sample = loop.time() + self._rng.uniform(0, self._interval_s)
        try:
            while (now := loop.time()) < deadline:
                if link.lost.is_set():
                    raise ControllerUnavailable(link.lost_message())
                if worker.done():
                    worker.result()  # raises what ended the deployments
                if now >= next_sample:
                    next_sample = max(next_sample + self._interval_s, now)
                    sample = self._telemetry.sample(self.device_id, self._variant_id)
                    self.stats.step = "sending telemetry"
                    await link.send(fleet_pb2.AgentMessage(telemetry=sample))
                    self.stats.telemetry_sent += 1
                    continue
                self.stats.step = "waiting for commands"
                try:
                    command = await asyncio.wait_for(
                        link.commands.get(), min(next_sample, deadline) - now
                    )
                except TimeoutError:
                    continue
                self._handle(command, deploys)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, ControllerUnavailable):
                await worker

    # -- commands -----------------------------------------------------------------------

    def _handle(self, command: fleet_pb2.Command, deploys: asyncio.Queue) -> None:
        if command.command_id in self._seen:
            return
        kind = command.WhichOneof("body")
        if kind == "set_telemetry_interval":
            self._interval_s = command.set_telemetry_interval.interval_s
        elif kind == "deploy":
            deploys.put_nowait(command)
        self._seen.add(command.command_id)

    async def _deploy_worker(self, link: Link, deploys: asyncio.Queue) -> None:
        while True:
            command = await deploys.get()
            try:
                await self._deploy(link, command)
            except ControllerUnavailable:
                # Not applied: the controller re-sends the deployment after a reconnect.
                self._seen.discard(command.command_id)
                raise

    async def _deploy(self, link: Link, command: fleet_pb2.Command) -> None:
        deploy = command.deploy
        manifest = deploy.manifest
        issued_at = command.issued_at_ms / 1000 if command.issued_at_ms else time.time()
        if self.stats.deploy_started_at is None:
            self.stats.deploy_started_at = issued_at

        async def report(state: UpdateState, message: str = "") -> None:
            self.stats.deploying = f"deployment {deploy.deployment_id} {state.value}"
            status = fleet_pb2.DeploymentStatus(
                device_id=self.device_id,
                deployment_id=deploy.deployment_id,
                variant_id=manifest.variant_id,
                state=state.to_proto(),
                message=message,
                previous_variant_id=self._variant_id,
                reported_at_ms=int(time.time() * 1000),
            )
            await link.send(fleet_pb2.AgentMessage(status=status))

        await report(UpdateState.PENDING)
        try:
            if manifest.sha256 != self._sha256:
                await self._fetch(link, manifest, report)
        except (ArtifactError, InvalidInputError) as exc:
            self.stats.deployments_failed += 1
            logger.warning(
                "simulated agent %s failed deployment %s: %s",
                self.device_id,
                deploy.deployment_id,
                exc,
            )
            await report(UpdateState.FAILED, str(exc))
            self.stats.deploying = ""
            return
        self._variant_id = manifest.variant_id
        self._sha256 = manifest.sha256
        self.stats.active_at = time.time()
        await report(UpdateState.ACTIVE)
        self.stats.deploying = ""

    async def _fetch(self, link: Link, manifest: fleet_pb2.VariantManifest, report) -> None:
        """Download the artifact and check its size and SHA-256 as the bytes arrive.

        The simulator does not load the model, so it keeps no copy: disk use stays flat
        however many agents deploy.
        """
        sha256 = validate_sha256(manifest.sha256)
        digest = hashlib.sha256()
        received = 0

        def sink(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received > manifest.size_bytes:
                raise ArtifactError(f"artifact {sha256} is longer than {manifest.size_bytes} bytes")
            digest.update(data)

        await report(UpdateState.DOWNLOADING)
        await link.fetch(
            sha256=sha256, size=manifest.size_bytes, sink=sink, timeout_s=_DOWNLOAD_TIMEOUT_S
        )
        await report(UpdateState.VERIFYING)
        if received != manifest.size_bytes:
            raise ArtifactError(
                f"size mismatch for artifact {sha256}: expected {manifest.size_bytes} bytes, "
                f"got {received}"
            )
        if digest.hexdigest() != sha256:
            raise ArtifactError(
                f"sha256 mismatch for artifact: expected {sha256}, got {digest.hexdigest()}"
            )
        await report(UpdateState.LOADING)


class _TelemetryModel:
    """Synthetic resource and latency figures that drift like a busy board's."""

    def __init__(self, profile: DeviceProfile, rng: random.Random) -> None:
        self._profile = profile
        self._rng = rng
        self._seq = 0
        self._cpu = rng.uniform(10, 40)
        self._available_mb = profile.memory_mb * rng.uniform(0.4, 0.7)
        self._disk_free_mb = rng.uniform(8_000, 30_000)
        self._temperature_c = rng.uniform(40, 55)
        # Latency well inside the budget, so the controller's policy has nothing to do.
        self._p50_ms = profile.latency_budget_ms * rng.uniform(0.1, 0.3)
        self._last = time.monotonic()

    def sample(self, device_id: str, variant_id: str) -> fleet_pb2.TelemetrySample:
        rng = self._rng
        self._seq += 1
        now = time.monotonic()
        window_s, self._last = max(now - self._last, 1e-3), now
        self._cpu = min(100.0, max(0.0, self._cpu + rng.gauss(0, 5)))
        self._temperature_c = min(85.0, max(30.0, self._temperature_c + rng.gauss(0, 0.5)))
        available = self._available_mb * rng.uniform(0.97, 1.03)
        cores = self._profile.cpu_cores
        load = cores * self._cpu / 100

        rps = rng.uniform(5, 20) if variant_id else 0.0
        requests = int(rps * window_s)
        p50 = self._p50_ms * rng.uniform(0.9, 1.1) if requests else 0.0
        return fleet_pb2.TelemetrySample(
            device_id=device_id,
            seq=self._seq,
            sampled_at_ms=int(time.time() * 1000),
            cpu_percent=self._cpu,
            memory_total_mb=float(self._profile.memory_mb),
            memory_available_mb=min(available, float(self._profile.memory_mb)),
            load_1m=load,
            load_5m=load * 0.9,
            load_15m=load * 0.8,
            disk_free_mb=self._disk_free_mb,
            temperature_c=self._temperature_c,
            agent_rss_mb=rng.uniform(60, 90),
            variant_id=variant_id,
            requests=requests,
            latency_p50_ms=p50,
            latency_p95_ms=p50 * 1.3,
            latency_p99_ms=p50 * 1.6,
            throughput_rps=requests / window_s,
            window_s=window_s,
        )


def _calibration(profile: DeviceProfile, rng: random.Random) -> fleet_pb2.Calibration:
    """Return a plausible calibration of the real reference model, without running it."""
    from edgefleet.agent.calibration import reference_sha256

    p50 = rng.uniform(1.5, 3.0)
    return fleet_pb2.Calibration(
        reference_sha256=reference_sha256(),
        threads=profile.inference_threads,
        runs=200,
        latency_p50_ms=p50,
        latency_p95_ms=p50 * rng.uniform(1.1, 1.4),
    )


# -- running ------------------------------------------------------------------------------


def run_agents(
    config: SimulationConfig, indexes: Sequence[int], deadline_s: float
) -> list[AgentStats]:
    """Run the agents ``indexes`` on one event loop until ``deadline_s`` (Unix seconds).

    This is one worker process's share of the fleet.
    """
    # Each agent uses one socket (MQTT) or one channel (gRPC, a socket and a few more).
    _raise_open_file_limit(len(indexes) * 4 + 256)
    return asyncio.run(_run_agents(config, indexes, deadline_s))


async def _run_agents(
    config: SimulationConfig, indexes: Sequence[int], deadline_s: float
) -> list[AgentStats]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, deadline_s - time.time())
    link_factory, close = _link_factory(config, loop)
    agents = [SimulatedAgent(config, index) for index in indexes]

    async def start(agent: SimulatedAgent, index: int) -> AgentStats:
        # Agents start evenly over the ramp, in index order across every process.
        await asyncio.sleep(config.ramp_s * index / config.agents)
        return await agent.run(deadline, link_factory)

    tasks = [
        asyncio.create_task(start(agent, index), name=agent.device_id)
        for agent, index in zip(agents, indexes, strict=True)
    ]
    try:
        # A transport call blocked past the deadline ends by its own timeouts. An agent
        # still running after the grace period is cancelled and reported as it is.
        _done, pending = await asyncio.wait(
            tasks, timeout=max(0.0, deadline - loop.time()) + _STOP_GRACE_S
        )
        for agent, task in zip(agents, tasks, strict=True):
            if task not in pending:
                continue
            # Read before cancelling: the agent's cleanup changes its step.
            agent.stats.record_error(
                f"cancelled {_STOP_GRACE_S:g} s after the deadline, still {agent.stats.step}"
            )
            logger.warning(
                "simulated agent %s was still %s %g s after the deadline; cancelled it",
                agent.device_id,
                agent.stats.step,
                _STOP_GRACE_S,
            )
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for agent in agents:
            if agent.stats.deploying:
                agent.stats.record_error(f"{agent.stats.deploying} at the deadline")
    finally:
        close()
    return [agent.stats for agent in agents]


def _link_factory(
    config: SimulationConfig, loop: asyncio.AbstractEventLoop
) -> tuple[Callable[[str], Link], Callable[[], None]]:
    if config.transport is TransportKind.MQTT:
        from edgefleet.agent.simulate_mqtt import MqttDriver, MqttLink

        assert config.broker is not None
        broker = config.broker
        driver = MqttDriver(loop)
        return (lambda device_id: MqttLink(driver, broker, device_id)), driver.close

    from edgefleet.agent.simulate_grpc import GrpcLink

    return (lambda device_id: GrpcLink(config.controller, device_id)), lambda: None


def _raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "open-file limit %d is below the %d this share of agents needs; raise the hard "
            "limit (ulimit -Hn) or use more --processes",
            target,
            needed,
        )


def run_simulation(config: SimulationConfig) -> SimulationReport:
    """Run ``config.agents`` simulated agents for ``config.duration_s`` and report."""
    started_at = datetime.now(UTC)
    deadline_s = time.time() + config.duration_s
    indexes = range(config.agents)
    shares = [list(indexes[offset :: config.processes]) for offset in range(config.processes)]
    logger.info(
        "simulating %d agents over %s in %d processes for %.1f s",
        config.agents,
        config.transport.value,
        config.processes,
        config.duration_s,
    )
    if config.processes == 1:
        stats = run_agents(config, shares[0], deadline_s)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config.processes, mp_context=context) as pool:
            futures = [pool.submit(run_agents, config, share, deadline_s) for share in shares]
            stats = [agent for future in futures for agent in future.result()]
    elapsed_s = (datetime.now(UTC) - started_at).total_seconds()
    return _report(config, stats, started_at=started_at, elapsed_s=elapsed_s)


def _report(
    config: SimulationConfig, stats: list[AgentStats], *, started_at: datetime, elapsed_s: float
) -> SimulationReport:
    ingested, lag_p99_ms, rate = (None, None, None)
    if config.db_url is not None:
        window_start = started_at + timedelta(seconds=config.ramp_s + config.telemetry_interval_s)
        window_end = started_at + timedelta(seconds=config.duration_s)
        received = read_ingest(config.db_url, config.device_prefix, since=started_at)
        ingested, lag_p99_ms = received.count, received.lag_p99_ms
        rate = received.rate(window_start, window_end) or round(ingested / elapsed_s, 1)
    return SimulationReport(
        transport=config.transport.value,
        agents=config.agents,
        duration_s=round(elapsed_s, 3),
        agents_connected=sum(agent.connected for agent in stats),
        agents_online_at_end=sum(agent.online_at_end for agent in stats),
        reconnects=sum(max(0, agent.sessions - 1) for agent in stats),
        telemetry_sent=sum(agent.telemetry_sent for agent in stats),
        telemetry_ingested=ingested,
        ingest_msgs_per_s=rate,
        ingest_lag_p99_ms=lag_p99_ms,
        deploy_seconds=deploy_seconds(stats),
        agents_deployed=sum(agent.active_at is not None for agent in stats),
        deployments_failed=sum(agent.deployments_failed for agent in stats),
        errors=sum(agent.errors for agent in stats),
        error_examples=list(
            dict.fromkeys(message for agent in stats for message in agent.error_messages)
        )[:MAX_ERROR_EXAMPLES],
    )


def deploy_seconds(stats: Sequence[AgentStats]) -> float | None:
    """Return seconds from the first deploy command to the last agent ACTIVE.

    None when no deploy command arrived, or when a connected agent never reached ACTIVE.
    The start is the command's ``issued_at_ms`` on the controller's clock, so the figure
    is exact only when the controller runs on the simulator's host.
    """
    starts = [agent.deploy_started_at for agent in stats if agent.deploy_started_at is not None]
    connected = [agent for agent in stats if agent.connected]
    if not starts or any(agent.active_at is None for agent in connected):
        return None
    last_active = max(agent.active_at for agent in connected if agent.active_at is not None)
    return round(max(0.0, last_active - min(starts)), 3)


@dataclasses.dataclass(frozen=True, slots=True)
class IngestRows:
    """The receive times of the simulated devices' telemetry rows, with their p99 lag."""

    received_at: list[datetime]
    lag_p99_ms: float | None

    @property
    def count(self) -> int:
        return len(self.received_at)

    def rate(self, start: datetime, end: datetime) -> float | None:
        """Return rows per second received in [start, end); None for a window under 1 s."""
        seconds = (end - start).total_seconds()
        if seconds < 1:
            return None
        inside = sum(start <= received < end for received in self.received_at)
        return round(inside / seconds, 1)


def check_ingest_database(db_url: str) -> None:
    """Check that ``db_url`` is a controller database with telemetry, before a run.

    Raises ``InvalidInputError`` naming the URL and the fix. A SQLite file that does not
    exist is reported, not created.
    """
    import sqlalchemy as sa

    from edgefleet.controller.db import open_database
    from edgefleet.controller.errors import DatabaseError
    from edgefleet.controller.models import TelemetryRow

    fix = "pass the controller's database, for example sqlite:////var/lib/edgefleet/edgefleet.db"
    try:
        parsed = sa.make_url(db_url)
    except sa.exc.ArgumentError:
        raise InvalidInputError(f"invalid --db URL {db_url!r}; {fix}") from None
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.is_file():
            raise InvalidInputError(f"--db {db_url!r}: no database file at {path}; {fix}")
    try:
        database = open_database(db_url, migrate=False)
    except DatabaseError as exc:
        raise InvalidInputError(f"--db {db_url!r}: {exc}") from None
    try:
        with database.session() as session:
            session.execute(sa.select(TelemetryRow.id).limit(1))
    except sa.exc.SQLAlchemyError as exc:
        raise InvalidInputError(
            f"--db {db_url!r} is not an edgefleet controller database "
            f"({type(exc).__name__}: {exc.args[0] if exc.args else exc}); {fix}"
        ) from None
    finally:
        database.close()


def read_ingest(db_url: str, device_prefix: str, *, since: datetime) -> IngestRows:
    """Read the simulated devices' telemetry rows received since ``since``.

    The lag of a row is ``received_at - sampled_at`` in milliseconds. Both clocks are the
    simulator host's when the controller runs there too.
    """
    import numpy as np
    import sqlalchemy as sa

    from edgefleet.controller.db import open_database
    from edgefleet.controller.models import TelemetryRow

    database = open_database(db_url, migrate=False)
    query = sa.select(TelemetryRow.sampled_at, TelemetryRow.received_at).where(
        TelemetryRow.device_id.like(f"{device_prefix}-%"), TelemetryRow.received_at >= since
    )
    try:
        rows = _settled_rows(database, query)
    finally:
        database.close()
    if not rows:
        return IngestRows([], None)
    lags_ms = [(received - sampled).total_seconds() * 1000 for sampled, received in rows]
    return IngestRows(
        [received for _sampled, received in rows], round(float(np.percentile(lags_ms, 99)), 1)
    )


def _settled_rows(database, query) -> list:
    """Read ``query`` until its row count stops growing, because the controller batches writes."""
    give_up = time.monotonic() + _SETTLE_MAX_S
    with database.session() as session:
        rows = list(session.execute(query))
    while time.monotonic() < give_up:
        time.sleep(_SETTLE_QUIET_S)
        with database.session() as session:
            again = list(session.execute(query))
        if len(again) == len(rows):
            break
        rows = again
    return rows
