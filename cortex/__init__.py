from .session import get_library_path, get_ep_name, session_options, InferenceSession
