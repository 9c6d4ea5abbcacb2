"""Pre-annotation of whole datasets: boxes in (:func:`polyrnn.formats.read_boxes`), batched automatic polygons
(:mod:`~polyrnn.batch.annotate`), resumable sharded runs and their merge (:mod:`~polyrnn.batch.run`), and
the same work on a Ray cluster (:mod:`~polyrnn.batch.ray_engine`)."""
