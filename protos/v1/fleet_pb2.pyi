from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CpuArch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CPU_ARCH_UNSPECIFIED: _ClassVar[CpuArch]
    CPU_ARCH_AARCH64: _ClassVar[CpuArch]
    CPU_ARCH_ARMV7L: _ClassVar[CpuArch]
    CPU_ARCH_X86_64: _ClassVar[CpuArch]

class TensorType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_TYPE_UNSPECIFIED: _ClassVar[TensorType]
    TENSOR_TYPE_FLOAT32: _ClassVar[TensorType]
    TENSOR_TYPE_FLOAT16: _ClassVar[TensorType]
    TENSOR_TYPE_INT64: _ClassVar[TensorType]
    TENSOR_TYPE_INT32: _ClassVar[TensorType]
    TENSOR_TYPE_UINT8: _ClassVar[TensorType]
    TENSOR_TYPE_INT8: _ClassVar[TensorType]

class DeploymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATE_UNSPECIFIED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_PENDING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_DOWNLOADING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_VERIFYING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_LOADING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_ACTIVE: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_FAILED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_ROLLED_BACK: _ClassVar[DeploymentState]

class PresenceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENCE_STATE_UNSPECIFIED: _ClassVar[PresenceState]
    PRESENCE_STATE_ONLINE: _ClassVar[PresenceState]
    PRESENCE_STATE_OFFLINE: _ClassVar[PresenceState]
CPU_ARCH_UNSPECIFIED: CpuArch
CPU_ARCH_AARCH64: CpuArch
CPU_ARCH_ARMV7L: CpuArch
CPU_ARCH_X86_64: CpuArch
TENSOR_TYPE_UNSPECIFIED: TensorType
TENSOR_TYPE_FLOAT32: TensorType
TENSOR_TYPE_FLOAT16: TensorType
TENSOR_TYPE_INT64: TensorType
TENSOR_TYPE_INT32: TensorType
TENSOR_TYPE_UINT8: TensorType
TENSOR_TYPE_INT8: TensorType
DEPLOYMENT_STATE_UNSPECIFIED: DeploymentState
DEPLOYMENT_STATE_PENDING: DeploymentState
DEPLOYMENT_STATE_DOWNLOADING: DeploymentState
DEPLOYMENT_STATE_VERIFYING: DeploymentState
DEPLOYMENT_STATE_LOADING: DeploymentState
DEPLOYMENT_STATE_ACTIVE: DeploymentState
DEPLOYMENT_STATE_FAILED: DeploymentState
DEPLOYMENT_STATE_ROLLED_BACK: DeploymentState
PRESENCE_STATE_UNSPECIFIED: PresenceState
PRESENCE_STATE_ONLINE: PresenceState
PRESENCE_STATE_OFFLINE: PresenceState

class DeviceProfile(_message.Message):
    __slots__ = ("name", "cpu_arch", "cpu_cores", "cpu_flags", "memory_mb", "model_memory_budget_mb", "latency_budget_ms", "onnxruntime_version", "inference_threads")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    CPU_FLAGS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MODEL_MEMORY_BUDGET_MB_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_THREADS_FIELD_NUMBER: _ClassVar[int]
    name: str
    cpu_arch: CpuArch
    cpu_cores: int
    cpu_flags: _containers.RepeatedScalarFieldContainer[str]
    memory_mb: int
    model_memory_budget_mb: int
    latency_budget_ms: float
    onnxruntime_version: str
    inference_threads: int
    def __init__(self, name: _Optional[str] = ..., cpu_arch: _Optional[_Union[CpuArch, str]] = ..., cpu_cores: _Optional[int] = ..., cpu_flags: _Optional[_Iterable[str]] = ..., memory_mb: _Optional[int] = ..., model_memory_budget_mb: _Optional[int] = ..., latency_budget_ms: _Optional[float] = ..., onnxruntime_version: _Optional[str] = ..., inference_threads: _Optional[int] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("reference_sha256", "threads", "runs", "latency_p50_ms", "latency_p95_ms")
    REFERENCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    reference_sha256: str
    threads: int
    runs: int
    latency_p50_ms: float
    latency_p95_ms: float
    def __init__(self, reference_sha256: _Optional[str] = ..., threads: _Optional[int] = ..., runs: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("device_id", "profile", "calibration", "agent_version", "onnxruntime_version", "current_variant_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    profile: DeviceProfile
    calibration: Calibration
    agent_version: str
    onnxruntime_version: str
    current_variant_id: str
    def __init__(self, device_id: _Optional[str] = ..., profile: _Optional[_Union[DeviceProfile, _Mapping]] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., agent_version: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., current_variant_id: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("device_id", "telemetry_interval_s", "profile_fingerprint", "controller_time_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    telemetry_interval_s: float
    profile_fingerprint: str
    controller_time_ms: int
    def __init__(self, device_id: _Optional[str] = ..., telemetry_interval_s: _Optional[float] = ..., profile_fingerprint: _Optional[str] = ..., controller_time_ms: _Optional[int] = ...) -> None: ...

class TelemetrySample(_message.Message):
    __slots__ = ("device_id", "seq", "sampled_at_ms", "cpu_percent", "memory_total_mb", "memory_available_mb", "load_1m", "load_5m", "load_15m", "disk_free_mb", "temperature_c", "agent_rss_mb", "variant_id", "requests", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "throughput_rps", "window_s", "dropped_samples")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_MB_FIELD_NUMBER: _ClassVar[int]
    LOAD_1M_FIELD_NUMBER: _ClassVar[int]
    LOAD_5M_FIELD_NUMBER: _ClassVar[int]
    LOAD_15M_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_MB_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    AGENT_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_RPS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    seq: int
    sampled_at_ms: int
    cpu_percent: float
    memory_total_mb: float
    memory_available_mb: float
    load_1m: float
    load_5m: float
    load_15m: float
    disk_free_mb: float
    temperature_c: float
    agent_rss_mb: float
    variant_id: str
    requests: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    throughput_rps: float
    window_s: float
    dropped_samples: int
    def __init__(self, device_id: _Optional[str] = ..., seq: _Optional[int] = ..., sampled_at_ms: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., memory_total_mb: _Optional[float] = ..., memory_available_mb: _Optional[float] = ..., load_1m: _Optional[float] = ..., load_5m: _Optional[float] = ..., load_15m: _Optional[float] = ..., disk_free_mb: _Optional[float] = ..., temperature_c: _Optional[float] = ..., agent_rss_mb: _Optional[float] = ..., variant_id: _Optional[str] = ..., requests: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., throughput_rps: _Optional[float] = ..., window_s: _Optional[float] = ..., dropped_samples: _Optional[int] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "type", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: TensorType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[TensorType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("type", "shape", "data")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: TensorType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, type: _Optional[_Union[TensorType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class VariantMetrics(_message.Message):
    __slots__ = ("accuracy", "latency_p95_ms", "peak_memory_mb")
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    accuracy: float
    latency_p95_ms: float
    peak_memory_mb: float
    def __init__(self, accuracy: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., peak_memory_mb: _Optional[float] = ...) -> None: ...

class SelfTest(_message.Message):
    __slots__ = ("input", "expected_output", "rtol", "atol")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    expected_output: Tensor
    rtol: float
    atol: float
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., expected_output: _Optional[_Union[Tensor, _Mapping]] = ..., rtol: _Optional[float] = ..., atol: _Optional[float] = ...) -> None: ...

class VariantManifest(_message.Message):
    __slots__ = ("variant_id", "model_id", "recipe_json", "sha256", "size_bytes", "inputs", "outputs", "metrics", "self_test", "opset")
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_JSON_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SELF_TEST_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    model_id: str
    recipe_json: str
    sha256: str
    size_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    metrics: VariantMetrics
    self_test: SelfTest
    opset: int
    def __init__(self, variant_id: _Optional[str] = ..., model_id: _Optional[str] = ..., recipe_json: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., metrics: _Optional[_Union[VariantMetrics, _Mapping]] = ..., self_test: _Optional[_Union[SelfTest, _Mapping]] = ..., opset: _Optional[int] = ...) -> None: ...

class DeployCommand(_message.Message):
    __slots__ = ("deployment_id", "manifest", "signed_manifest")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNED_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    manifest: VariantManifest
    signed_manifest: SignedManifest
    def __init__(self, deployment_id: _Optional[str] = ..., manifest: _Optional[_Union[VariantManifest, _Mapping]] = ..., signed_manifest: _Optional[_Union[SignedManifest, _Mapping]] = ...) -> None: ...

class SetTelemetryIntervalCommand(_message.Message):
    __slots__ = ("interval_s",)
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    def __init__(self, interval_s: _Optional[float] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "issued_at_ms", "deploy", "set_telemetry_interval")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    SET_TELEMETRY_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    issued_at_ms: int
    deploy: DeployCommand
    set_telemetry_interval: SetTelemetryIntervalCommand
    def __init__(self, command_id: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., deploy: _Optional[_Union[DeployCommand, _Mapping]] = ..., set_telemetry_interval: _Optional[_Union[SetTelemetryIntervalCommand, _Mapping]] = ...) -> None: ...

class DeploymentStatus(_message.Message):
    __slots__ = ("device_id", "deployment_id", "variant_id", "state", "message", "previous_variant_id", "reported_at_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    deployment_id: str
    variant_id: str
    state: DeploymentState
    message: str
    previous_variant_id: str
    reported_at_ms: int
    def __init__(self, device_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., variant_id: _Optional[str] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., message: _Optional[str] = ..., previous_variant_id: _Optional[str] = ..., reported_at_ms: _Optional[int] = ...) -> None: ...

class SessionHello(_message.Message):
    __slots__ = ("device_id", "current_variant_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    current_variant_id: str
    def __init__(self, device_id: _Optional[str] = ..., current_variant_id: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "telemetry", "status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: SessionHello
    telemetry: TelemetrySample
    status: DeploymentStatus
    def __init__(self, hello: _Optional[_Union[SessionHello, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetrySample, _Mapping]] = ..., status: _Optional[_Union[DeploymentStatus, _Mapping]] = ...) -> None: ...

class Presence(_message.Message):
    __slots__ = ("device_id", "state", "current_variant_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    state: PresenceState
    current_variant_id: str
    def __init__(self, device_id: _Optional[str] = ..., state: _Optional[_Union[PresenceState, str]] = ..., current_variant_id: _Optional[str] = ...) -> None: ...

class SessionAck(_message.Message):
    __slots__ = ("telemetry_seq", "controller_time_ms")
    TELEMETRY_SEQ_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    telemetry_seq: int
    controller_time_ms: int
    def __init__(self, telemetry_seq: _Optional[int] = ..., controller_time_ms: _Optional[int] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("command", "ack")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    command: Command
    ack: SessionAck
    def __init__(self, command: _Optional[_Union[Command, _Mapping]] = ..., ack: _Optional[_Union[SessionAck, _Mapping]] = ...) -> None: ...

class ArtifactRequest(_message.Message):
    __slots__ = ("device_id", "sha256", "offset", "chunk_size")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    sha256: str
    offset: int
    chunk_size: int
    def __init__(self, device_id: _Optional[str] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("sha256", "offset", "total_size", "data", "crc32")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    total_size: int
    data: bytes
    crc32: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ...) -> None: ...

class ManifestPayload(_message.Message):
    __slots__ = ("variant", "device_id", "deployment_id", "version", "issued_at_ms", "expires_at_ms", "rollback")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    variant: VariantManifest
    device_id: str
    deployment_id: str
    version: int
    issued_at_ms: int
    expires_at_ms: int
    rollback: bool
    def __init__(self, variant: _Optional[_Union[VariantManifest, _Mapping]] = ..., device_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., version: _Optional[int] = ..., issued_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., rollback: _Optional[bool] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("payload", "key_id", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    key_id: str
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class TrustedKey(_message.Message):
    __slots__ = ("key_id", "public_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("token", "device_id", "csr_pem")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    device_id: str
    csr_pem: bytes
    def __init__(self, token: _Optional[str] = ..., device_id: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "certificate_pem", "ca_certificate_pem", "server_certificate_pem", "server_name", "manifest_keys", "controller_time_ms", "mqtt_username", "mqtt_password")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    SERVER_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_KEYS_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MQTT_USERNAME_FIELD_NUMBER: _ClassVar[int]
    MQTT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    server_certificate_pem: bytes
    server_name: str
    manifest_keys: _containers.RepeatedCompositeFieldContainer[TrustedKey]
    controller_time_ms: int
    mqtt_username: str
    mqtt_password: str
    def __init__(self, device_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., server_certificate_pem: _Optional[bytes] = ..., server_name: _Optional[str] = ..., manifest_keys: _Optional[_Iterable[_Union[TrustedKey, _Mapping]]] = ..., controller_time_ms: _Optional[int] = ..., mqtt_username: _Optional[str] = ..., mqtt_password: _Optional[str] = ...) -> None: ...
