"""Infrastructure: the AWS stack as code (``infra/cdk``), the Kafka and Flink jars' poms, the
local emulator wrapper (``infra/local``), prices for ``speedlayer cost``."""
