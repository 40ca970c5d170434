import jax


# Diffrax's own test configuration. Stiff problems need double precision; the library
# itself never flips these switches.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
