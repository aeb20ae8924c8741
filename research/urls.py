"""Pages for findings, incidents and stage reviews."""



urlpatterns: list = [
    # --- findings ---
    # --- end findings ---
    # --- incidents ---
    # --- end incidents ---
    # --- releases ---
    # --- end releases ---
]
