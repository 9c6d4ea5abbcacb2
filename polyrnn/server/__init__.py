"""The annotation tool in the browser: a FastAPI app (:mod:`polyrnn.server.app`) over an annotation
store of LabelMe JSON files (:mod:`polyrnn.server.store`) and a plain-JavaScript page (``static/``)."""
