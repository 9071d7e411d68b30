"""Writing files: the streaming atomic writer, convert, repair, output layouts, presets and job reports."""
