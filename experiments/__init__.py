"""The project's commands, `python -m experiments.<name>`: flags, progress and errors; the work is the
library's. Each command starts without the optional modules Keras probes for at import and this project
never uses (`fashionsearchnet_v2.startup`, decision P11): about 1.4 s of every start on a 2-core EPYC."""

from fashionsearchnet_v2 import startup

startup.skip_keras_optional_imports()
startup.quiet_tensorflow_start()
