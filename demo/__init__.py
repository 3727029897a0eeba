"""The README's main job: every tool end to end under a throwaway root."""
