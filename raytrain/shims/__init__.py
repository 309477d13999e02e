"""Every use of a private name of Ray, TensorFlow or MLflow, in one package.

Nothing else in raytrain imports a private module or name (``_internal``, ``_private``,
``_raylet``, ``_common``, ``tensorflow.python``, a leading-underscore method of theirs):
tests/test_shims.py fails when one does. Each shim module says which versions it was written
against (``WRITTEN_FOR``) and checks, when it is imported, that every private name it uses still
exists and, where it patches or overrides one, that the library still calls it
(``check.require`` and ``check.calls``): a version bump that moves a name fails loudly, in one
line naming the shim, instead of turning a workaround into a silent no-op.

- ``ray_train``: Ray Train V2's failure policy, callbacks, backend helpers and settings.
- ``ray_core``: Ray's driver error printing, the address of a running ``ray start``, the GCS
  placement-group table, the auth token loader, loggers of private modules.
- ``tensorflow``: MultiWorkerMirroredStrategy's per-device datasets (imported by workers only).
- ``mlflow``: MLflow's dataset entity for logging dataset inputs.
"""

from raytrain.shims.check import ShimError, strict

__all__ = ["ShimError", "strict"]
