"""polyrnn inside the labelling tools teams already use: a Label Studio ML back end
(:mod:`~polyrnn.integrations.label_studio`) and a CVAT serverless interactor (``integrations/cvat/``)."""
