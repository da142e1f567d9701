"""The AWS stack (infra/cdk), synthesized once, offline, with the context of infra/cdk/cdk.json
and a concrete account, then asserted resource by resource with ``aws_cdk.assertions`` and
linted with cfn-lint.

The synthesis runs the CDK in-process (Python over jsii: a node subprocess), so no AWS account,
credentials, ``cdk bootstrap`` or network are involved. The Flink application zip is built with
``launch.flink_package`` for the test account (without the connector jars, ``make flink``, the
same zip without its jar); the Lambda code is a stand-in directory (the package itself is
``make lambda-package``'s).

Names are checked against literal lists here (an independent statement of the naming) and
against what the services' own code computes and creates (the recorded CreateTable requests of
the DynamoDB store and the checkpoint table).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template

from infra.cdk import speedlayer_stack as stack_module
from infra.cdk.speedlayer_stack import (
    FlinkPackage,
    Names,
    StackOptions,
    build,
    check_flink_package,
    stack_settings,
)
from launch import emf
from launch.cli import main as cli
from launch.flink_package import (
    MERGED_JAR,
    PROPERTIES_FILE,
    application_properties,
    build_package,
    deployment_spec,
)
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.errors import ConfigError
from speedlayer.kinesis_shards import CheckpointTable
from speedlayer.store.dynamodb import DynamoDBStore

ROOT = Path(__file__).resolve().parents[3]
CDK_DIR = ROOT / "infra" / "cdk"
ACCOUNT, REGION = "123456789012", "eu-west-1"
TABLE_PREFIX, STREAM_PREFIX = "stg_", "stg-"
INTERVALS = ("1m", "5m", "15m", "30m", "1h", "2h", "4h")
TABLES = [
    f"stg_speed_layer_ohlcv_{suffix}"
    for suffix in ("1min", "5min", "15min", "30min", "1h", "2h", "4h")
]
RAW_STREAM = "stg-market-data-raw"
CANDLE_STREAMS = [f"stg-market-data-{name}" for name in INTERVALS]
CONTEXT = {
    "account": ACCOUNT,
    "region": REGION,
    # what `cdk synth` with credentials would look up and cache in cdk.context.json
    f"availability-zones:account={ACCOUNT}:region={REGION}": [f"{REGION}{z}" for z in "abc"],
    "tablePrefix": TABLE_PREFIX,
    "streamPrefix": STREAM_PREFIX,
    "pointInTimeRecovery": "true",  # as `-c pointInTimeRecovery=true` gives it: a string
    "shards": "2",
    "kafkaSink": True,
    "kafkaBootstrapServers": "b-1.msk.example:9094,b-2.msk.example:9094",
    "apiKeysSecretName": "stg/api-keys",
    "alarmEmail": "oncall@example.com",
}
# cfn-lint warnings the synthesized template may have, with the reason they are accepted.
ALLOWED_WARNINGS = {
    "W3005": "CDK adds DependsOn for ordering (a service after its listener's target group, a "
    "function after its role and policy) next to a Ref or GetAtt of the same resource: "
    "redundant, harmless",
    "W3010": "the stack has a concrete environment, so CDK writes the availability zones it "
    "looked up (here from the test's context) into the subnets; CDK owns them",
}
# Allow statements on these services' resources never name `*` as a resource.
DATA_SERVICES = {"dynamodb", "kinesis", "s3", "sqs", "sns", "secretsmanager", "kms"}


@dataclass
class Synth:
    template: Template
    json: dict[str, Any]
    path: Path
    outdir: Path
    flink_zip: Path
    messages: list[tuple[str, str]]
    stack: Any

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.json["Resources"].items() if v["Type"] == kind}

    def props(self, kind: str) -> list[dict[str, Any]]:
        return [r["Properties"] for r in self.resources(kind).values()]

    def logical_id(self, kind: str, **where: Any) -> str:
        found = [
            k
            for k, r in self.resources(kind).items()
            if all(r["Properties"].get(p) == v for p, v in where.items())
        ]
        assert len(found) == 1, (kind, where, found)
        return found[0]


def _flink_zip(settings: Settings, path: Path) -> Path:
    try:
        build_package(settings, path, "kinesis")
    except ConfigError:  # no connector jars (make flink): the same zip, without its jar
        spec = deployment_spec(settings, "kinesis")
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("job.json", json.dumps(spec))
            archive.writestr(PROPERTIES_FILE, json.dumps(application_properties(MERGED_JAR, None)))
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    work = tmp_path_factory.mktemp("cdk")
    options = StackOptions.from_context(CONTEXT.get)
    settings = stack_settings(options, ACCOUNT, REGION)
    flink_zip = _flink_zip(settings, work / "speedlayer-flink-kinesis.zip")
    lambda_dir = work / "lambda"
    (lambda_dir / "processors").mkdir(parents=True)
    (lambda_dir / "processors" / "__init__.py").write_text("# a stand-in for build/lambda.zip\n")
    context = json.loads((CDK_DIR / "cdk.json").read_text())["context"]
    context.update(CONTEXT, flinkPackage=str(flink_zip), lambdaCode=str(lambda_dir))
    app = cdk.App(outdir=str(work / "cdk.out"), context=context)
    stack = build(app, {})
    assembly = app.synth()
    artifact = assembly.get_stack_by_name(stack.stack_name)
    path = Path(assembly.directory) / artifact.template_file
    template_json = json.loads(path.read_text())
    messages = [(str(m.level), str(m.entry.data)) for m in artifact.messages]
    return Synth(
        Template.from_json(template_json),
        template_json,
        path,
        Path(assembly.directory),
        flink_zip,
        messages,
        stack,
    )


# -- DynamoDB ---------------------------------------------------------------------------------


def test_the_seven_candle_tables_and_the_checkpoint_table(synth: Synth) -> None:
    synth.template.resource_count_is("AWS::DynamoDB::Table", 8)
    for name in TABLES:
        synth.template.has_resource_properties(
            "AWS::DynamoDB::Table",
            {
                "TableName": name,
                "KeySchema": [
                    {"AttributeName": "symbol", "KeyType": "HASH"},
                    {"AttributeName": "timestamp", "KeyType": "RANGE"},
                ],
                "AttributeDefinitions": Match.array_equals(
                    [
                        {"AttributeName": "symbol", "AttributeType": "S"},
                        {"AttributeName": "timestamp", "AttributeType": "N"},
                    ]
                ),
                "BillingMode": "PAY_PER_REQUEST",
                "TimeToLiveSpecification": {"AttributeName": "ttl", "Enabled": True},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            },
        )
    synth.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "TableName": "speedlayer_checkpoints",
            "KeySchema": [
                {"AttributeName": "lease", "KeyType": "HASH"},
                {"AttributeName": "shard", "KeyType": "RANGE"},
            ],
            "BillingMode": "PAY_PER_REQUEST",
            "TimeToLiveSpecification": Match.absent(),
        },
    )
    # Data outlives the stack unless retainData=false.
    for table in synth.resources("AWS::DynamoDB::Table").values():
        assert table["DeletionPolicy"] == "Retain"


def test_point_in_time_recovery_is_off_by_default() -> None:
    nothing: dict[str, Any] = {}
    assert StackOptions.from_context(nothing.get).point_in_time_recovery is False
    given = StackOptions.from_context({"pointInTimeRecovery": "true"}.get)
    assert given.point_in_time_recovery is True


def test_table_and_stream_names_are_the_services_own(synth: Synth) -> None:
    settings = Settings(
        dynamodb_table_prefix=TABLE_PREFIX, kinesis_stream_prefix=STREAM_PREFIX, _env_file=None
    )
    names = Names.of(settings)
    assert list(names.tables.values()) == TABLES
    assert names.raw_stream == RAW_STREAM and list(names.candle_streams.values()) == CANDLE_STREAMS
    assert sorted(p["TableName"] for p in synth.props("AWS::DynamoDB::Table")) == sorted(
        [*TABLES, "speedlayer_checkpoints"]
    )


class RecordingDynamoDB:
    """A DynamoDB client that records the requests the services' code makes to create tables."""

    def __init__(self) -> None:
        self.created: dict[str, dict[str, Any]] = {}
        self.ttl: dict[str, dict[str, Any]] = {}

    async def create_table(self, **request: Any) -> dict[str, Any]:
        self.created[request["TableName"]] = request
        return {}

    async def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"TableStatus": "ACTIVE"}}

    async def describe_time_to_live(self, TableName: str) -> dict[str, Any]:
        return {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}

    async def update_time_to_live(self, **request: Any) -> dict[str, Any]:
        self.ttl[request["TableName"]] = request["TimeToLiveSpecification"]
        return {}


def test_the_tables_are_what_the_services_would_create(synth: Synth) -> None:
    """The key schema, billing and TTL of every table equal the CreateTable and
    UpdateTimeToLive requests of `speedlayer init-aws`'s code (the DynamoDB store and the
    checkpoint table), recorded."""
    settings = Settings(dynamodb_table_prefix=TABLE_PREFIX, _env_file=None)
    client = RecordingDynamoDB()
    store = DynamoDBStore(settings.interval_set, SystemClock(), table_prefix=TABLE_PREFIX)
    store._client = client

    async def create() -> None:
        await store.ensure_tables()
        checkpoints = CheckpointTable(
            client, "speedlayer_checkpoints", timeout_s=1, error=RuntimeError
        )
        await checkpoints.ensure(1)

    asyncio.run(create())
    assert sorted(client.created) == sorted([*TABLES, "speedlayer_checkpoints"])
    tables = {p["TableName"]: p for p in synth.props("AWS::DynamoDB::Table")}
    for name, request in client.created.items():
        table = tables[name]
        assert table["KeySchema"] == request["KeySchema"], name
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(
            request["AttributeDefinitions"], key=str
        )
        assert table["BillingMode"] == request["BillingMode"]
        assert table.get("TimeToLiveSpecification") == client.ttl.get(name), name


# -- Kinesis ----------------------------------------------------------------------------------


def test_the_raw_and_candle_streams(synth: Synth) -> None:
    synth.template.resource_count_is("AWS::Kinesis::Stream", 8)
    for name in [RAW_STREAM, *CANDLE_STREAMS]:
        synth.template.has_resource_properties(
            "AWS::Kinesis::Stream",
            {
                "Name": name,
                "ShardCount": 2,
                "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "StreamEncryption": {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"},
                "RetentionPeriodHours": 24,
            },
        )


# -- Managed Flink ----------------------------------------------------------------------------


def test_the_flink_application_runs_the_packaged_job(synth: Synth) -> None:
    synth.template.resource_count_is("AWS::KinesisAnalyticsV2::Application", 1)
    with zipfile.ZipFile(synth.flink_zip) as archive:
        groups = json.loads(archive.read(PROPERTIES_FILE))
    assert groups[0]["PropertyGroupId"] == "kinesis.analytics.flink.run.options"
    (app,) = synth.props("AWS::KinesisAnalyticsV2::Application")
    assert app["RuntimeEnvironment"] == "FLINK-2_2"
    assert app["ApplicationMode"] == "STREAMING"
    config = app["ApplicationConfiguration"]
    code = config["ApplicationCodeConfiguration"]
    assert code["CodeContentType"] == "ZIPFILE"
    assert code["CodeContent"]["S3ContentLocation"]["FileKey"].endswith(".zip")
    assert config["EnvironmentProperties"]["PropertyGroups"] == groups
    flink = config["FlinkApplicationConfiguration"]
    assert flink["CheckpointConfiguration"] == {
        "ConfigurationType": "CUSTOM",
        "CheckpointingEnabled": True,
        "CheckpointInterval": 60000,
        "MinPauseBetweenCheckpoints": 5000,
    }
    assert flink["ParallelismConfiguration"] == {
        "ConfigurationType": "CUSTOM",
        "Parallelism": 1,
        "ParallelismPerKPU": 1,
        "AutoScalingEnabled": False,
    }
    assert config["ApplicationSnapshotConfiguration"] == {"SnapshotsEnabled": True}
    logging = "AWS::KinesisAnalyticsV2::ApplicationCloudWatchLoggingOption"
    synth.template.resource_count_is(logging, 1)


def test_the_flink_code_asset_is_the_zip(synth: Synth) -> None:
    (app,) = synth.props("AWS::KinesisAnalyticsV2::Application")
    key = app["ApplicationConfiguration"]["ApplicationCodeConfiguration"]["CodeContent"][
        "S3ContentLocation"
    ]["FileKey"]
    staged = synth.outdir / f"asset.{key}"
    digest = hashlib.sha256(synth.flink_zip.read_bytes()).hexdigest()
    assert hashlib.sha256(staged.read_bytes()).hexdigest() == digest


def test_the_flink_role_reads_raw_and_writes_candles(synth: Synth) -> None:
    roles = [
        k
        for k, r in synth.resources("AWS::IAM::Role").items()
        if "kinesisanalytics" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])
    ]
    assert len(roles) == 1
    statements = _statements_of_role(synth, roles[0])
    streams = {p["Name"]: k for k, p in _by_id(synth, "AWS::Kinesis::Stream").items()}
    raw = {"Fn::GetAtt": [streams[RAW_STREAM], "Arn"]}
    assert any("kinesis:GetRecords" in s["Action"] and s["Resource"] == raw for s in statements)
    for name in CANDLE_STREAMS:
        arn = {"Fn::GetAtt": [streams[name], "Arn"]}
        assert any(
            "kinesis:PutRecords" in s["Action"] and arn in _list(s["Resource"]) for s in statements
        ), name
    assert not any(
        "kinesis:PutRecords" in _list(s["Action"]) and raw in _list(s["Resource"])
        for s in statements
    )


def test_the_flink_package_must_match_the_stack() -> None:
    settings = stack_settings(StackOptions(stream_prefix="stg-"), ACCOUNT, REGION)
    groups = application_properties(MERGED_JAR, None)

    def package(**changes: Any) -> FlinkPackage:
        spec = deployment_spec(settings.model_copy(update=changes), "kinesis")
        return FlinkPackage(Path("job.zip"), spec, groups)

    assert check_flink_package(package(), settings, ACCOUNT, REGION) == []
    with pytest.raises(ConfigError, match="stream prefix"):
        check_flink_package(package(kinesis_stream_prefix="prod-"), settings, ACCOUNT, REGION)
    with pytest.raises(ConfigError, match="account 999999999999"):
        check_flink_package(package(aws_account_id="999999999999"), settings, ACCOUNT, REGION)
    with pytest.raises(ConfigError, match="region"):
        check_flink_package(package(aws_region="us-east-1"), settings, ACCOUNT, REGION)
    other = stack_settings(StackOptions(stream_prefix="stg-", intervals="5m,1h"), ACCOUNT, REGION)
    with pytest.raises(ConfigError, match="intervals"):
        check_flink_package(package(), other, ACCOUNT, REGION)
    kafka = FlinkPackage(Path("job.zip"), deployment_spec(settings, "kafka"), groups)
    with pytest.raises(ConfigError, match="--env kinesis"):
        check_flink_package(kafka, settings, ACCOUNT, REGION)
    # Without the stack's account (an offline synth) the zip's own is reported, not checked.
    placeholder = package(aws_account_id="000000000000")
    (warning,) = check_flink_package(placeholder, settings, None, None)
    assert "placeholder account 000000000000" in warning


# -- Lambda sinks ---------------------------------------------------------------------------


def test_the_lambda_sinks(synth: Synth) -> None:
    synth.template.resource_count_is("AWS::Lambda::Function", 2)
    for handler in (
        "processors.kinesis_to_dynamodb.handler",
        "processors.kinesis_to_kafka.handler",
    ):
        synth.template.has_resource_properties(
            "AWS::Lambda::Function",
            {"Handler": handler, "Runtime": "python3.11", "MemorySize": 512, "Timeout": 60},
        )


def test_the_lambda_environment_is_settings_the_handlers_read(
    synth: Synth, monkeypatch: pytest.MonkeyPatch
) -> None:
    for props in synth.props("AWS::Lambda::Function"):
        env = props["Environment"]["Variables"]
        assert env["SPEEDLAYER_AWS_CREATE_RESOURCES"] == "false"
        assert env["SPEEDLAYER_AWS_REGION"] == REGION
        for name in env:
            assert name.startswith("SPEEDLAYER_"), name
            assert name.removeprefix("SPEEDLAYER_").lower() in Settings.model_fields, name
        for name in list(os.environ):
            if name.startswith("SPEEDLAYER_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None)  # what the handler sees
        assert list(Names.of(settings).tables.values()) == TABLES
        assert settings.interval_set.names == list(INTERVALS)
        assert settings.lambda_retry_timeout_s < props["Timeout"]
        if props["Handler"].endswith("kinesis_to_kafka.handler"):
            assert settings.kafka_bootstrap_servers == CONTEXT["kafkaBootstrapServers"]
            assert props["VpcConfig"]["SubnetIds"]


def test_one_mapping_per_candle_stream_and_function(synth: Synth) -> None:
    mappings = synth.props("AWS::Lambda::EventSourceMapping")
    assert len(mappings) == 2 * len(CANDLE_STREAMS)
    streams = {k: p["Name"] for k, p in _by_id(synth, "AWS::Kinesis::Stream").items()}
    queue = synth.logical_id("AWS::SQS::Queue")
    per_function: dict[str, list[str]] = {}
    for mapping in mappings:
        assert mapping["BatchSize"] == 500
        assert mapping["MaximumBatchingWindowInSeconds"] == 1
        assert mapping["BisectBatchOnFunctionError"] is True
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["MaximumRetryAttempts"] == 1000
        assert mapping["StartingPosition"] == "TRIM_HORIZON"
        assert mapping["ParallelizationFactor"] == 1
        assert mapping["DestinationConfig"] == {
            "OnFailure": {"Destination": {"Fn::GetAtt": [queue, "Arn"]}}
        }
        stream = streams[mapping["EventSourceArn"]["Fn::GetAtt"][0]]
        per_function.setdefault(mapping["FunctionName"]["Ref"], []).append(stream)
    assert len(per_function) == 2
    for streams_read in per_function.values():
        assert sorted(streams_read) == sorted(CANDLE_STREAMS)  # never the raw stream


def test_retries_until_the_records_expire_is_an_option() -> None:
    assert StackOptions.from_context({"lambdaRetryAttempts": "-1"}.get).lambda_retry_attempts == -1


# -- ECS --------------------------------------------------------------------------------------


def _containers(synth: Synth) -> dict[str, dict[str, Any]]:
    found = {}
    for props in synth.props("AWS::ECS::TaskDefinition"):
        for container in props["ContainerDefinitions"]:
            found[container["Name"]] = {**container, "_task": props}
    return found


def test_the_ingest_service(synth: Synth) -> None:
    ingest = _containers(synth)["ingest"]
    assert ingest["EntryPoint"] == ["speedlayer"]
    assert ingest["Command"] == ["ingest", "--bus", "kinesis", "--source", "polygon"]
    (secret,) = ingest["Secrets"]
    assert secret["Name"] == "POLYGON_API_KEY"
    assert ":secret:speedlayer/polygon-api-key" in json.dumps(secret["ValueFrom"])
    env = {e["Name"]: e["Value"] for e in ingest["Environment"]}
    assert env["SPEEDLAYER_KINESIS_STREAM_PREFIX"] == STREAM_PREFIX
    assert env["SPEEDLAYER_METRICS_NAMESPACE"] == f"Speedlayer/{synth.stack.stack_name}"
    assert ingest["LogConfiguration"]["LogDriver"] == "awslogs"
    # one task; the old one stops before a new one connects with the same Polygon key
    synth.template.has_resource_properties(
        "AWS::ECS::Service",
        {
            "DesiredCount": 1,
            "LaunchType": "FARGATE",
            "DeploymentConfiguration": Match.object_like(
                {"MinimumHealthyPercent": 0, "MaximumPercent": 100}
            ),
        },
    )


def test_both_containers_run_the_images_health_check(synth: Synth) -> None:
    """ECS ignores the image's HEALTHCHECK: each container names it, and the API's check asks
    the port the API listens on."""
    from launch import healthcheck

    containers = _containers(synth)
    ingest, api = containers["ingest"]["HealthCheck"], containers["api"]["HealthCheck"]
    assert ingest["Command"] == ["CMD", "python", "-m", "launch.healthcheck"]
    port = containers["api"]["PortMappings"][0]["ContainerPort"]
    assert api["Command"] == [
        "CMD", "python", "-m", "launch.healthcheck", "--url", f"http://127.0.0.1:{port}/readyz"
    ]  # fmt: skip
    assert port == int(containers["api"]["Command"][-1])
    for check in (ingest, api):
        assert check["Interval"] == 15 and check["Retries"] == 3 and check["StartPeriod"] == 60
        # the check fails only when the health file is older than its max age: ingest rewrites
        # it more often than that
        assert healthcheck.WRITE_EVERY_S < healthcheck.MAX_AGE_S


def test_the_api_service_behind_the_load_balancer(synth: Synth) -> None:
    api = _containers(synth)["api"]
    assert api["EntryPoint"] == ["speedlayer"]
    assert api["Command"][:5] == ["api", "--bus", "kinesis", "--store", "dynamodb"]
    assert api["PortMappings"][0]["ContainerPort"] == 8000
    assert [s["Name"] for s in api["Secrets"]] == ["SPEEDLAYER_API_KEYS"]
    synth.template.has_resource_properties(
        "AWS::ECS::Service",
        {"DesiredCount": 2, "LoadBalancers": [Match.object_like({"ContainerPort": 8000})]},
    )
    synth.template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        {"Scheme": "internet-facing", "Type": "application"},
    )
    synth.template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        {
            "Port": 8000,
            "Protocol": "HTTP",
            "TargetType": "ip",
            "HealthCheckPath": "/readyz",
            "Matcher": {"HttpCode": "200"},
        },
    )
    synth.template.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget", {"MinCapacity": 2, "MaxCapacity": 4}
    )
    metrics = {
        p["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"][
            "PredefinedMetricType"
        ]
        for p in synth.props("AWS::ApplicationAutoScaling::ScalingPolicy")
    }
    assert metrics == {"ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"}


def test_the_container_commands_are_valid_speedlayer_commands(synth: Synth) -> None:
    for name, container in _containers(synth).items():
        command, *args = container["Command"]
        parsed = cli.commands[command].make_context(command, list(args))  # raises if invalid
        assert parsed.params["bus"] == "kinesis", name


# -- monitoring -------------------------------------------------------------------------------


def _alarms(synth: Synth) -> list[dict[str, Any]]:
    return synth.props("AWS::CloudWatch::Alarm")


def _metric_stats(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    if "MetricName" in alarm:
        return [alarm]
    return [q["MetricStat"]["Metric"] for q in alarm["Metrics"] if "MetricStat" in q]


def test_alarms_cover_iterator_age_errors_throttles_and_feed_lag(synth: Synth) -> None:
    alarms = _alarms(synth)
    topic = synth.logical_id("AWS::SNS::Topic")
    for alarm in alarms:
        assert alarm["AlarmActions"] == [{"Ref": topic}], alarm.get("AlarmDescription")
    names = Counter(m["MetricName"] for a in alarms for m in _metric_stats(a))
    assert names["GetRecords.IteratorAgeMilliseconds"] == 8  # every stream, in one alarm
    assert names["IteratorAge"] == 2 and names["Errors"] == 2  # per Lambda sink
    assert names["WriteThrottleEvents"] == 7 and names["ReadThrottleEvents"] == 7
    assert names[emf.FEED_LAG] == 1
    assert names["downtime"] == 1 and names["ApproximateNumberOfMessagesVisible"] == 1
    stream_ages = [
        m
        for a in alarms
        for m in _metric_stats(a)
        if m["MetricName"] == "GetRecords.IteratorAgeMilliseconds"
    ]
    streams = {k: p["Name"] for k, p in _by_id(synth, "AWS::Kinesis::Stream").items()}
    assert sorted(streams[m["Dimensions"][0]["Value"]["Ref"]] for m in stream_ages) == sorted(
        [RAW_STREAM, *CANDLE_STREAMS]
    )
    synth.template.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    synth.template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "oncall@example.com"}
    )


def test_the_feed_lag_alarm_reads_the_metric_ingest_writes(synth: Synth) -> None:
    """The alarm's namespace, name and dimensions are those of the EMF line `speedlayer ingest`
    writes with the namespace the stack gives the ingest task."""
    namespace = {e["Name"]: e["Value"] for e in _containers(synth)["ingest"]["Environment"]}[
        "SPEEDLAYER_METRICS_NAMESPACE"
    ]
    line = json.loads(emf.emf_line(namespace, emf.INGEST, 0, {emf.FEED_LAG: 12.0}, {}))
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    (alarm,) = [a for a in _alarms(synth) if a.get("MetricName") == emf.FEED_LAG]
    assert alarm["Namespace"] == directive["Namespace"]
    assert [d["Name"] for d in alarm["Dimensions"]] == directive["Dimensions"][0]
    assert all(d["Value"] == line[d["Name"]] for d in alarm["Dimensions"])
    assert alarm["TreatMissingData"] == "breaching"  # no line at all is an alarm too


# -- IAM --------------------------------------------------------------------------------------


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _by_id(synth: Synth, kind: str) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in synth.resources(kind).items()}


def _statements_of_role(synth: Synth, role: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in synth.props("AWS::IAM::Policy")
        if {"Ref": role} in policy["Roles"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def iam_violations(template: dict[str, Any]) -> list[str]:
    """Allow statements with a wildcard in an action, or `*` as the resource of an action on a
    data service; NotAction/NotResource at all."""
    found = []
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        documents = []
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append(props["PolicyDocument"])
        if resource["Type"] == "AWS::IAM::Role":
            documents += [p["PolicyDocument"] for p in props.get("Policies", [])]
        for document in documents:
            for statement in document["Statement"]:
                if statement.get("Effect") != "Allow":
                    continue
                if "NotAction" in statement or "NotResource" in statement:
                    found.append(f"{logical_id}: NotAction/NotResource")
                actions = _list(statement.get("Action", []))
                resources = _list(statement.get("Resource", []))
                for action in actions:
                    if "*" in action:
                        found.append(f"{logical_id}: wildcard action {action}")
                    if action.split(":")[0] in DATA_SERVICES and "*" in resources:
                        found.append(f"{logical_id}: {action} on *")
    return found


def test_iam_is_least_privilege(synth: Synth) -> None:
    assert iam_violations(synth.json) == []
    managed = {
        json.dumps(arn)
        for role in synth.props("AWS::IAM::Role")
        for arn in role.get("ManagedPolicyArns", [])
    }
    assert all(
        "AWSLambdaBasicExecutionRole" in arn or "AWSLambdaVPCAccessExecutionRole" in arn
        for arn in managed
    ), managed


def test_the_iam_check_finds_what_it_forbids() -> None:
    def template(*statements: dict[str, Any]) -> dict[str, Any]:
        return {
            "Resources": {
                "P": {
                    "Type": "AWS::IAM::Policy",
                    "Properties": {"PolicyDocument": {"Statement": list(statements)}},
                }
            }
        }

    arn = {"Fn::GetAtt": ["T", "Arn"]}
    assert iam_violations(template({"Effect": "Allow", "Action": "dynamodb:*", "Resource": arn}))
    assert iam_violations(template({"Effect": "Allow", "Action": "*", "Resource": arn}))
    assert iam_violations(template({"Effect": "Allow", "Action": "s3:Get*", "Resource": arn}))
    assert iam_violations(
        template({"Effect": "Allow", "Action": ["kinesis:GetRecords"], "Resource": "*"})
    )
    assert iam_violations(template({"Effect": "Allow", "NotAction": "iam:*", "Resource": arn}))
    assert not iam_violations(
        template({"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"})
    )
    assert not iam_violations(template({"Effect": "Deny", "Action": "sqs:*", "Resource": arn}))


# -- the template as a whole ----------------------------------------------------------------


def test_synthesis_reports_nothing(synth: Synth) -> None:
    """No error and no warning annotation (read-budget, placeholder account, CDK's own)."""
    assert synth.messages == []


def test_cfn_lint_finds_no_errors(synth: Synth) -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run(
        [str(cfn_lint), "--format", "json", str(synth.path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 2, 4, 6, 8, 10, 12, 14), proc.stderr  # bit flags, not a crash
    matches = json.loads(proc.stdout or "[]")
    problems = [
        f"{m['Rule']['Id']} {m['Message']} ({m['Location']['Path']})"
        for m in matches
        if m["Level"] != "Warning" or m["Rule"]["Id"] not in ALLOWED_WARNINGS
    ]
    assert problems == []


def test_every_context_option_is_documented() -> None:
    """infra/README.md holds the options table as the stack's own options make it."""
    readme = (ROOT / "infra" / "README.md").read_text()
    table = stack_module.options_table()
    assert table in readme, "paste infra.cdk.speedlayer_stack.options_table() into the README"
    assert all(f"| `{key}` |" in table for key, _, _ in stack_module.OPTIONS)


def test_context_values_given_as_strings_are_converted() -> None:
    options = StackOptions.from_context(
        {"shards": "3", "retainData": "false", "apiPollIntervalS": "2.5"}.get
    )
    assert (options.shards, options.retain_data, options.api_poll_interval_s) == (3, False, 2.5)
    with pytest.raises(ConfigError, match="shards"):
        StackOptions.from_context({"shards": "many"}.get)
    with pytest.raises(ConfigError, match="kafkaBootstrapServers"):
        build(cdk.App(context={"kafkaSink": "true", "lambdaCode": str(ROOT)}), {})


@pytest.fixture(autouse=True, scope="module")
def _no_shell_settings() -> Iterator[None]:
    """The stack's settings come from its context, not from the shell: a SPEEDLAYER_ variable
    set here must not change what is synthesized."""
    saved = os.environ.get("SPEEDLAYER_DYNAMODB_TABLE_PREFIX")
    os.environ["SPEEDLAYER_DYNAMODB_TABLE_PREFIX"] = "from_the_shell_"
    yield
    if saved is None:
        del os.environ["SPEEDLAYER_DYNAMODB_TABLE_PREFIX"]
    else:
        os.environ["SPEEDLAYER_DYNAMODB_TABLE_PREFIX"] = saved


# -- the cost model (launch/cost.py) prices this stack --------------------------------------------


def test_the_cost_model_prices_the_stack_as_synthesized(synth: Synth) -> None:
    from dataclasses import fields

    from launch.cost import SHAPE

    defaults: dict[str, Any] = {f.name: f.default for f in fields(StackOptions)}
    assert SHAPE["api_tasks"] == defaults["api_min_tasks"]
    assert SHAPE["api_vcpu"] == defaults["api_cpu"] / 1024
    assert SHAPE["api_gb"] == defaults["api_memory_mib"] / 1024
    assert SHAPE["ingest_vcpu"] == defaults["ingest_cpu"] / 1024
    assert SHAPE["ingest_gb"] == defaults["ingest_memory_mib"] / 1024
    assert SHAPE["lambda_memory_gb"] == defaults["lambda_memory_mb"] / 1024
    assert SHAPE["lambda_batch_size"] == defaults["lambda_batch_size"]
    assert (
        SHAPE["flink_kpus"]
        == defaults["flink_parallelism"] // defaults["flink_parallelism_per_kpu"]
    )
    # The stack under test adds the Kafka sink: its iterator-age and errors alarms.
    assert CONTEXT["kafkaSink"] is True
    assert SHAPE["alarms"] + 2 == len(synth.resources("AWS::CloudWatch::Alarm"))
    assert SHAPE["dashboards"] == len(synth.resources("AWS::CloudWatch::Dashboard"))
    streams = synth.resources("AWS::Kinesis::Stream")
    assert len(streams) == 1 + SHAPE["candle_streams"]
