"""Network definitions: FaceBoxes split into a trust-zone head and a server-side tail (:mod:`veil.models.faceboxes`)."""
