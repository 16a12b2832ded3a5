"""Microcontrollers and NPUs: runtime (LiteRT for Microcontrollers in this process: run, size the arena, list the
operators, read a C array back), carray (the `micro` export format: batch-1 int8 .tflite, C array and header),
vela (Arm Vela compilations for Ethos-U and its performance-model estimates) and boards (does it fit)."""
