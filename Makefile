# speedlayer: `make run` and `make test` do all of their own setup (idempotent; a second call is fast).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

RUN_STAMP  := $(VENV)/.installed-runtime
NODE_STAMP := node_modules/.installed
NODE_RUN_STAMP := node_modules/.installed-runtime
KAFKA_STAMP := .kafka/.installed
FLINK_VENV  := .flink-venv
FLINK_STAMP := $(FLINK_VENV)/.installed
FLINK_JARS  := .flink/.installed
# Flink's Kinesis SQL connector for Flink 2.x (the released artifact is
# org.apache.flink:flink-sql-connector-aws-kinesis-streams:6.0.0-2.0). Where a Maven mirror lacks
# it, FLINK_KINESIS_JAR names a build of it; the AWS-shape test of the Flink job needs it.
SHARED_DIR  ?= $(or $(SPEEDLAYER_SHARED_DIR),../shared)
FLINK_KINESIS_JAR ?= $(SHARED_DIR)/vendor/flink-connector-aws-6.0.0/flink-sql-connector-aws-kinesis-streams-6.0.0-srcbuild.jar
FLINK_KINESIS := .flink/lib/flink-sql-connector-aws-kinesis-streams-6.0.0.jar
# The job's Java aggregate functions (flink_sql/udf), loaded in every environment.
FLINK_UDF   := .flink/lib/speedlayer-flink-udf.jar
FLINK_UDF_SRC := flink_sql/udf/pom.xml $(shell find flink_sql/udf/src -name '*.java' 2>/dev/null)
CHROMIUM    := /usr/bin/chromium
WRK         := /usr/bin/wrk
SUDO        := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET     := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
# Debian packages, installed when missing; the package index is refreshed only if it is stale.
apt_install = $(APT_GET) install -y -qq --no-install-recommends $(1) >/dev/null || \
  { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $(1) >/dev/null; }

.PHONY: help venv flink setup run test test-fast lint pytest clean aws-local kafka-local infra-synth screenshot bench soak

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## the Python virtualenv (.venv) with the project and its dev tools

setup: $(STAMP) $(NODE_STAMP) $(KAFKA_STAMP) $(FLINK_STAMP) $(FLINK_JARS) $(FLINK_KINESIS) $(FLINK_UDF) $(CHROMIUM) $(WRK) ## everything the tests need

flink: $(FLINK_STAMP) $(FLINK_JARS) $(FLINK_KINESIS) $(FLINK_UDF) ## the Flink SQL job's virtualenv (.flink-venv), connector jars and functions (.flink/lib)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Every npm package of package-lock.json: the chart library the dashboard serves, and what the
# tests and tools use (the AWS emulators dynalite and kinesalite, the AWS CDK CLI). Runs again
# only when the lock changes.
$(NODE_STAMP): package-lock.json
	npm ci --no-audit --no-fund
	@touch $(NODE_STAMP)

# What `make run` needs and no more: the package with its runtime dependencies (no dev tools) and
# the npm packages the API serves (`dependencies`, not `devDependencies`). A full install (`make
# setup`, `make test`) that is current counts as one.
$(RUN_STAMP): pyproject.toml constraints.txt
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ] && [ $(STAMP) -nt constraints.txt ]; then :; else \
	  test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	  echo "$(BIN)/python -m pip install -c constraints.txt -e ."; \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .; fi
	@touch $@

$(NODE_RUN_STAMP): package-lock.json
	@if [ -f $(NODE_STAMP) ] && [ $(NODE_STAMP) -nt package-lock.json ]; then :; else \
	  echo "npm ci --omit=dev"; npm ci --omit=dev --no-audit --no-fund; fi
	@touch $@

# The Kafka broker the tests start (KRaft, no Docker): kafka_2.13 and its runtime jars from Maven
# Central into .kafka/lib (see infra/kafka/pom.xml). Needs Java 17+ and Maven: installed from
# Debian when missing. Runs again only when the pom changes.
$(KAFKA_STAMP): infra/kafka/pom.xml
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  echo "installing Java and Maven (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq default-jre-headless maven >/dev/null; }
	rm -rf .kafka/lib
	mvn -q -B -Dstyle.color=never -f infra/kafka/pom.xml dependency:copy-dependencies
	@touch $@

# The Flink SQL job's own virtualenv: apache-flink pins pandas, pyarrow and Beam versions of its
# own, so it stays apart from .venv (flink_sql/requirements.txt, exact pins in constraints.txt).
$(FLINK_STAMP): flink_sql/requirements.txt flink_sql/constraints.txt
	@test -x $(FLINK_VENV)/bin/python || $(PYTHON) -m venv $(FLINK_VENV)
	$(FLINK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -c flink_sql/constraints.txt -r flink_sql/requirements.txt
	@touch $@

# The connector jars the job loads (Kafka SQL connector for Flink 2.2) from Maven Central into
# .flink/lib (see infra/flink/pom.xml), and the SQL client's gateway jar into .flink/opt (the
# session-cluster test); Java and Maven as for the Kafka broker.
$(FLINK_JARS): infra/flink/pom.xml $(KAFKA_STAMP)
	rm -rf .flink/lib
	mvn -q -B -Dstyle.color=never -f infra/flink/pom.xml dependency:copy-dependencies dependency:copy@sql-client
	@touch $@

$(FLINK_KINESIS): $(FLINK_JARS)
	@if [ -f "$(FLINK_KINESIS_JAR)" ]; then cp "$(FLINK_KINESIS_JAR)" $@; \
	else echo "no Kinesis connector jar at $(FLINK_KINESIS_JAR) (FLINK_KINESIS_JAR=...): the Flink job runs on Kafka only"; fi

# The job's aggregate functions (flink_sql/udf/pom.xml: Java 17, Flink 2.2.1 `provided`), built
# with Maven into .flink/lib; again when a source or the pom changes, or .flink/lib was rebuilt.
$(FLINK_UDF): $(FLINK_UDF_SRC) $(FLINK_JARS)
	mvn -q -B -Dstyle.color=never -f flink_sql/udf/pom.xml package
	@mkdir -p $(@D)
	cp flink_sql/udf/target/speedlayer-flink-udf.jar $@

# Headless Chromium for the dashboard's browser test (driven by Playwright, which downloads no
# browser of its own): Debian's package, installed only when the binary is missing.
$(CHROMIUM):
	@echo "installing chromium (apt-get)"
	$(call apt_install,chromium)

# wrk, the HTTP load generator of the REST benchmark (bench/rest.py; its smoke run is a test).
$(WRK):
	@echo "installing wrk (apt-get)"
	$(call apt_install,wrk)

# Local AWS for development (Ctrl-C stops both), data kept across restarts:
#   DynamoDB (dynalite)  http://127.0.0.1:$(DYNAMODB_PORT)   data in $(AWS_LOCAL_DATA)/dynamodb
#   Kinesis (kinesalite) http://127.0.0.1:$(KINESIS_PORT)   data in $(AWS_LOCAL_DATA)/kinesis
# Point the services at them with SPEEDLAYER_DYNAMODB_ENDPOINT_URL and
# SPEEDLAYER_KINESIS_ENDPOINT_URL (README, "The AWS path"); no AWS credentials are needed.
# Installs only the emulators (npm ci), not the Python environment: run `make setup` first.
DYNAMODB_PORT  ?= 4567
KINESIS_PORT   ?= 4568
AWS_LOCAL_DATA ?= .data
aws-local: $(NODE_STAMP) ## local DynamoDB and Kinesis emulators (DYNAMODB_PORT=, KINESIS_PORT=, AWS_LOCAL_DATA=)
	@mkdir -p $(AWS_LOCAL_DATA)/kinesis
	@echo "DynamoDB http://127.0.0.1:$(DYNAMODB_PORT), Kinesis http://127.0.0.1:$(KINESIS_PORT) (Ctrl-C stops both)"
	@trap 'kill $$(jobs -p) 2>/dev/null' INT TERM EXIT; \
	  node node_modules/dynalite/cli.js --host 127.0.0.1 --port $(DYNAMODB_PORT) --path $(AWS_LOCAL_DATA)/dynamodb & \
	  node infra/local/kinesalite.js $(KINESIS_PORT) '{"path": "$(AWS_LOCAL_DATA)/kinesis", "shardLimit": 100}' & \
	  wait

# A single-node Kafka broker for development (the one the tests use: KRaft, jars from Maven
# Central in .kafka/lib, no Docker), on 127.0.0.1:$(KAFKA_PORT); Ctrl-C stops it and removes its
# data. Point the services at it with SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS (README, "The Kafka path").
KAFKA_PORT ?= 9092
kafka-local: $(STAMP) $(KAFKA_STAMP) ## a local Kafka broker (KAFKA_PORT=)
	$(BIN)/python -m tests.kafka_broker --port $(KAFKA_PORT)

# The AWS stack (infra/cdk, infra/README.md) synthesized into $(CDK_OUT) by the pinned CDK CLI
# (package-lock.json). Offline without AWS credentials (the stack is then account-agnostic; with
# them the CLI names the account). The stack builds the Flink job's zip from .flink/lib; the Lambda
# code is LAMBDA_PACKAGE (a zip or a directory). CDK_CONTEXT passes more, e.g. '-c shards=2'.
CDK_OUT        ?= build/cdk.out
LAMBDA_PACKAGE ?= build/lambda.zip
CDK_CONTEXT    ?=
CDK := CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=1 \
  JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=18,20 npx --no-install cdk
infra-synth: $(STAMP) $(NODE_STAMP) $(FLINK_JARS) $(FLINK_KINESIS) $(FLINK_UDF) ## synthesize the AWS stack into build/cdk.out (LAMBDA_PACKAGE=, CDK_CONTEXT=)
	cd infra/cdk && $(CDK) synth --no-notices --quiet --output $(abspath $(CDK_OUT)) \
	  -c lambdaCode=$(abspath $(LAMBDA_PACKAGE)) $(CDK_CONTEXT)

# The Lambda handlers' zip (launch/lambda_package.py, docs/aws.md#deploying): their packages and
# dependencies for Lambda's platform (Python 3.11, manylinux2014_x86_64) at the pins of
# constraints.txt; the same sources give the same bytes.
.PHONY: lambda-package deploy-check
lambda-package: $(STAMP) ## build/lambda.zip, the Lambda handlers' deployment package
	$(BIN)/python -m launch.lambda_package --out build/lambda.zip

# The container definitions, checked without Docker: docker-compose.yml against the Compose
# Specification's schema (as check-jsonschema ships it), the Dockerfiles linted with hadolint,
# then tests/unit/deploy (pinned images, health checks, dependencies, commands the CLI parses).
deploy-check: $(STAMP) ## check docker-compose.yml and the Dockerfiles (no Docker needed)
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/hadolint Dockerfile infra/flink/Dockerfile infra/local/Dockerfile
	$(BIN)/pytest -q tests/unit/deploy

# The embedded stack, live: Polygon simulator -> ingest -> resampler -> ./data/speedlayer.db -> API.
# `make run SPEED=5` runs the simulated market at 5 minutes per second (0 = real time).
# HISTORY: simulated minutes before start, all backfilled at start-up (the charts' history).
# MARKET: stocks, crypto or forex (the Polygon cluster, which the simulator serves; default
# SPEEDLAYER_POLYGON_MARKET, else stocks).
# HOST, PORT: where the API listens (127.0.0.1:8000). Installs only what running needs.
# WORKERS: API processes beside the pipeline's (0: one process; docs/design.md#api-processes).
SPEED   ?= 0
SYMBOLS ?= 100
HISTORY ?= 480
MARKET  ?=
WORKERS ?= 0
run: $(RUN_STAMP) $(NODE_RUN_STAMP) ## the embedded stack, live, on the simulator (SPEED=, SYMBOLS=, HISTORY=, MARKET=, WORKERS=, HOST=, PORT=)
	$(BIN)/speedlayer up --host $(HOST) --port $(PORT) --symbols $(SYMBOLS) --speed $(SPEED) \
	  --history $(HISTORY) --workers $(WORKERS) $(if $(MARKET),--market $(MARKET))

lint: $(STAMP) ## ruff and mypy (needs only the virtualenv)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# SPEEDLAYER_REQUIRE_ALL: a missing prerequisite (Java, the emulators, Chromium, wrk) fails the
# run instead of skipping its tests, so `make test` and CI always run everything.
# TEST_WORKERS pytest-xdist workers, each running whole test files (most tests wait on servers,
# brokers and JVMs; every worker starts its own session-wide emulators and broker on free ports).
TEST_WORKERS ?= 2
pytest: setup
	SPEEDLAYER_REQUIRE_ALL=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test: lint pytest ## lint, then every test (installs what they need; about 15 minutes)

test-fast: $(STAMP) ## the unit tests only (no servers, brokers or browsers; under a minute)
	SPEEDLAYER_TEST_FAST=1 $(BIN)/pytest tests/unit -q

# The benchmarks at full size (about 20 minutes): bench/results.json, docs/benchmarks.md and its
# plots (docs/bench-peers.png, docs/bench-latency.png; bench/plots.py draws them from the results).
# `make bench ONLY=rest` runs one (resampler, history, live, rest, store_writes, flink) and keeps the others.
bench: setup ## the benchmarks at full size (ONLY=resampler|history|live|rest|store_writes|flink)
	$(BIN)/python -m bench --readme README.md $(if $(ONLY),--only $(ONLY))

# The soak (bench/soak.py, about 22 minutes; not part of `make bench`): the full market with 1,000
# churning WebSocket clients, SSE and REST load; resident memory, open files and asyncio tasks every
# 10 s. Its entry in bench/results.json and docs/benchmarks.md, its plot in docs/soak.png.
soak: setup ## the soak benchmark, about 22 minutes: memory, files and tasks under client churn
	$(BIN)/python -m bench --readme README.md --only soak

# Re-make docs/dashboard.png, the README's picture, from the dashboard's end-to-end browser test.
screenshot: setup ## re-make docs/dashboard.png from the browser test
	SPEEDLAYER_UPDATE_SCREENSHOT=1 $(BIN)/pytest tests/integration/browser/test_dashboard.py -k end_to_end -q

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache data/synthetic.csv
