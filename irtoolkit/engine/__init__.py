"""The runner: options -> device / distribution / logging -> data -> model -> loop. It knows no method."""
