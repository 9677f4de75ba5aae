"""Face geometry shared by metrics, methods, protocols and CodeSwap: detection (dlib, RetinaFace,
YuNet), landmarks, alignment templates and crops, pasting a crop back, head pose."""
