"""The AWS deployment as an AWS CDK app: ``app.py`` (what ``npx cdk synth`` runs) and the
stack, ``speedlayer_stack.py``. See infra/README.md."""
