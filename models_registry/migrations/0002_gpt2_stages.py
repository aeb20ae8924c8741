"""The four GPT-2 release stages. Weights are registered later (checkpoint_import or checkpoint_demo)."""

from datetime import date

from django.db import migrations

STAGES = [
    ("gpt2", "GPT-2 Small", "124M", 124_439_808, 12, 768, 12, date(2019, 2, 14)),
    ("gpt2-medium", "GPT-2 Medium", "355M", 354_823_168, 24, 1024, 16, date(2019, 5, 3)),
    ("gpt2-large", "GPT-2 Large", "774M", 774_030_080, 36, 1280, 20, date(2019, 8, 20)),
    ("gpt2-xl", "GPT-2 XL", "1.5B", 1_557_611_200, 48, 1600, 25, date(2019, 11, 5)),
]


def add_stages(apps, schema_editor):
    Checkpoint = apps.get_model("models_registry", "Checkpoint")
    for slug, name, size, params, n_layer, n_embd, n_head, released in STAGES:
        Checkpoint.objects.update_or_create(
            slug=slug,
            defaults=dict(
                display_name=name,
                size_label=size,
                parameter_count=params,
                n_layer=n_layer,
                n_embd=n_embd,
                n_head=n_head,
                n_ctx=1024,
                vocab_size=50257,
                released_on=released,
            ),
        )


class Migration(migrations.Migration):
    dependencies = [("models_registry", "0001_initial")]
    operations = [migrations.RunPython(add_stages, migrations.RunPython.noop)]
