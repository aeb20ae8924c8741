from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from models_registry.models import Checkpoint


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("slug", "display_name", "size_label", "status", "is_demo", "weights_sha256")
    list_filter = ("status", "is_demo")
