"""The dataset converters, `python -m data_prep.<name>`. Like the experiments' commands, each starts
without the optional modules Keras probes for at import (`fashionsearchnet_v2.startup`, decision P11)."""

from fashionsearchnet_v2 import startup

startup.skip_keras_optional_imports()
startup.quiet_tensorflow_start()
