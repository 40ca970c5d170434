import jax


# Stiff problems need double precision; the library itself never flips this switch.
jax.config.update("jax_enable_x64", True)
