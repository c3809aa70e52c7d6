"""autotune's built-in plugins. Each module is an ordinary plugin, registered through the
``autotune`` entry-point group exactly as a third-party plugin would be."""
