"""Head pose from 68 landmarks: a 3D mean face + ``cv2.solvePnP`` (the offline default),
expressed in Hopenet's axis and sign convention.

Convention (Hopenet's, as its ``utils.draw_axis`` renders angles; image axes x right,
y down): the face's axes seen in the image are the columns of
``Rx(pitch) @ Ry(-yaw) @ Rz(roll)`` with a third axis pointing out of the face towards the
viewer. Hence, in degrees:

* yaw   > 0: the nose points to the image's left (the person turns to their right);
* pitch > 0: the nose points up (head tilted back);
* roll  > 0: the eye line slopes down towards the image's right (clockwise as seen).

PnP uses a pinhole camera with focal length = crop width and the principal point at the
centre (a 256 px crop of a face at normal distance); the face frame is built from the
mean face itself (eye line, eyes-to-chin, nose protrusion), so it needs no assumption
about how the 3D model's axes were chosen.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from faceeval.weights import verified

#: the 3D mean face at the 68 iBUG landmarks (head-pose's package data, faceeval.weights)
MEAN_FACE_FILE = "model_3D_68.txt"


@lru_cache(maxsize=1)
def mean_face_68() -> tuple[np.ndarray, str]:
    """(68, 3) mean face (x right, y down, z away from the viewer) and its file's sha256."""
    path, sha = verified(MEAN_FACE_FILE)
    pts = np.loadtxt(path, dtype=np.float64).reshape(3, -1).T  # stored as all x, all y, all z -> (68, 3)
    return pts, sha


def face_frame(model: np.ndarray) -> np.ndarray:
    """(3, 3) orthonormal columns in model coordinates: face-right, face-down, out of the face."""
    ex = model[45] - model[36]  # outer eye corners: image-left to image-right
    ex /= np.linalg.norm(ex)
    down = model[8] - (model[36] + model[45]) / 2  # eyes to chin
    ey = down - ex * (down @ ex)
    ey /= np.linalg.norm(ey)
    ez = np.cross(ex, ey)
    if ez @ (model[30] - model.mean(0)) < 0:  # point it the way the nose protrudes
        ez = -ez
    return np.stack([ex, ey, ez], axis=1)  # (3, 3)


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# camera frame (z away from the viewer) <-> Hopenet's drawing frame (z towards the viewer)
_FLIP_Z = np.diag([1.0, 1.0, -1.0])


def hopenet_axes(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Face axes in the image frame for angles in degrees (Hopenet's convention)."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    return rot_x(p) @ rot_y(-y) @ rot_z(r)


def camera_rotation(yaw: float, pitch: float, roll: float, model: np.ndarray) -> np.ndarray:
    """The model-to-camera rotation that shows ``model`` at these Hopenet angles (for tests)."""
    return _FLIP_Z @ hopenet_axes(yaw, pitch, roll) @ np.linalg.inv(face_frame(model))


def angles_from_camera_rotation(rot: np.ndarray, model: np.ndarray) -> np.ndarray:
    """(3, 3) model-to-camera rotation -> (yaw, pitch, roll) degrees, Hopenet's convention."""
    m = _FLIP_Z @ rot @ face_frame(model)  # face axes in the drawing frame = Rx(p) Ry(-y) Rz(r)
    yaw = -np.arcsin(np.clip(m[0, 2], -1.0, 1.0))
    pitch = np.arctan2(-m[1, 2], m[2, 2])
    roll = np.arctan2(-m[0, 1], m[0, 0])
    return np.rad2deg([yaw, pitch, roll])


def camera_matrix(width: int, height: int) -> np.ndarray:
    f = float(width)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=np.float64)


def pnp_pose(landmarks68: np.ndarray, width: int, height: int) -> np.ndarray:
    """(68, 2) image landmarks -> (yaw, pitch, roll) degrees by cv2.solvePnP on the mean face."""
    import cv2

    model, _ = mean_face_68()
    cam = camera_matrix(width, height)
    pts = np.ascontiguousarray(landmarks68, dtype=np.float64).reshape(-1, 1, 2)
    # Start from a frontal face (the model is stored in camera-like axes) at the distance
    # that matches its size: without a start, the iteration can land on the mirror
    # solution behind the camera.
    model_width = np.ptp(model[:, 0])
    face_width = max(np.ptp(pts[:, 0, 0]), 1.0)
    centre = pts[:, 0].mean(0)
    z = cam[0, 0] * model_width / face_width
    rvec0 = np.zeros((3, 1))
    tvec0 = np.array([[(centre[0] - cam[0, 2]) * z / cam[0, 0]], [(centre[1] - cam[1, 2]) * z / cam[1, 1]], [z]])
    ok, rvec, tvec = cv2.solvePnP(model, pts, cam, None, rvec0, tvec0, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return np.full(3, np.nan)
    rot, _ = cv2.Rodrigues(rvec)
    if tvec[2, 0] < 0:  # a solution behind the camera is the mirror ambiguity: reject
        return np.full(3, np.nan)
    return angles_from_camera_rotation(rot, model)
