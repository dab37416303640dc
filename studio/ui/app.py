"""The studio's Gradio Blocks: lays out components and wires events to ``Studio`` handlers, nothing more.

Every user-facing event has an ``api_name``, so ``gradio_client`` scripts drive the same
handlers as the page: generate, name_item, library, details, rerender, export, delete,
import_file, encode_image, invert_image, interpolate, store_frame, build_vector, prompt_vector,
discover_vectors, condition_vector, apply_vector, score_vector,
check_expression, render_expression, load_recipe, save_recipe, render_recipe.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.interpolation import EASINGS, MAX_FRAMES, METHODS
from studio.ui.handlers import BY_SEED, MAX_SWEEP, MAX_UI_COUNT, Studio

SPACE_KINDS = ["", "noise", "text", "vae", "hspace", "gan-z", "gan-w", "gan-w+"]
FONT = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"]  # no web fonts: works offline
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate", radius_size="sm",
                       spacing_size="sm", text_size="sm", font=FONT, font_mono=MONO)
CSS = """
.ls-title {display:flex; align-items:center; gap:.6rem; padding:.5rem .9rem; border-radius:8px;
  background:linear-gradient(90deg,#1e1b4b,#3730a3); color:#e0e7ff; flex-wrap:wrap}
.ls-title * {color:#e0e7ff !important}
.ls-logo {font-weight:700; font-size:1.1rem; letter-spacing:.02em; margin-right:.4rem; color:#fff !important}
.ls-chip {background:rgba(255,255,255,.14); padding:.1rem .6rem; border-radius:999px; font-size:.82rem}
.ls-chip b {color:#fff !important}
.ls-home {margin-left:auto; font-size:.72rem; opacity:.65; font-family:ui-monospace,monospace}
.ls-notice {border-left:4px solid #f59e0b; background:rgba(245,158,11,.10); padding:.3rem .8rem; border-radius:4px}
.ls-check {font-size:.9rem; min-height:2.2rem}
.ls-check pre {margin:.2rem 0}
#expr textarea, #recipe-code {font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.ls-hint {font-size:.8rem; opacity:.75}
#expr-image img, #lib-preview img, #gif img {width:100%; height:100%; object-fit:contain; image-rendering:pixelated}
"""


def recipe_template(model: str) -> str:
    settings = "settings: {steps: 4}\n" if model.startswith("tiny-") else ""
    return (f"# A recipe: named inputs, expressions and renders (see prompts/recipes/).\n"
            f"model: {model}\n{settings}"
            "inputs:\n  cat: {prompt: \"a cat\", seed: 1}\n  dog: {prompt: \"a dog\", seed: 2}\n"
            "let:\n  mid: \"slerp(@cat, @dog, 0.5)\"\n"
            "renders:\n  - name: cat_to_dog\n    expr: \"slerp(@cat, @dog, t)\"\n"
            "    sweep: {t: [0, 0.25, 0.5, 0.75, 1]}\n")


def build(studio: Studio) -> gr.Blocks:
    """The whole UI for one Studio; per-user values live in gr.State."""
    # a model not loaded yet shows its family now and its settings once the page's first open has loaded it
    start = (studio.model_preview(studio.model) if studio.loading(studio.model)
             else studio.model_info(studio.model, progress=None))
    pending = bool(start.get("loading"))
    defaults, diffusion = start["defaults"], start["family"] == "diffusion"
    guidance_label = start["guidance_label"]  # None: the model takes no guidance setting
    private: dict[str, Any] = {"api_visibility": "private"}
    quiet: dict[str, Any] = {**private, "show_progress": "hidden"}  # small glue updates: no spinner

    def model_picker(**options: Any) -> gr.Dropdown:
        """The models this studio offers, opening on its own; any other spec may be typed in."""
        return gr.Dropdown(studio.models(), value=studio.model, label="Model", allow_custom_value=True, **options)

    with gr.Blocks(title="Latent Studio", analytics_enabled=False) as demo:
        title = gr.HTML(studio.title(), elem_id="title")
        gr.Markdown(f"⚠ {studio.notice}", visible=bool(studio.notice), elem_classes="ls-notice", elem_id="notice")
        gen_ids, lib_gen_ids, lib_other_ids, parent_ids, plan = (gr.State([]) for _ in range(5))
        current_model = gr.State(studio.model)  # the last model this user picked that loaded

        with gr.Tabs():
            # ---------------------------------------------------------------- Generate
            with gr.Tab("Generate", id="generate", elem_id="tab-generate") as tab_generate:
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=290):
                        model = model_picker(elem_id="model", info="a built-in name, a diffusers folder, a hub id, a .safetensors checkpoint or a StyleGAN .pkl")
                        prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a cat wearing sunglasses",
                                            visible=diffusion, elem_id="prompt")
                        with gr.Row(equal_height=True):
                            seed = gr.Number(value=1, precision=0, label="Seed", minimum=0, scale=3, elem_id="seed")
                            dice = gr.Button("Random", scale=1, min_width=70, size="sm", elem_id="dice")
                        count = gr.Slider(1, MAX_UI_COUNT, value=4, step=1, label="Count", elem_id="count")
                        with gr.Row():
                            steps = gr.Slider(1, 100, value=defaults.get("steps", 20), step=1, label="Steps",
                                              visible=diffusion, interactive=not pending, elem_id="steps")
                            guidance = gr.Slider(0, 20, value=defaults.get("guidance", 7.5), step=0.5,
                                                 label=guidance_label or "Guidance", interactive=not pending,
                                                 visible=guidance_label is not None, elem_id="guidance")
                        truncation = gr.Slider(-1, 2, value=defaults.get("truncation", 1.0), step=0.05,
                                               label="Truncation ψ", visible=not diffusion, interactive=not pending,
                                               elem_id="truncation")
                        classes = start.get("classes") or []
                        gan_class = gr.Dropdown([BY_SEED, *classes], value=BY_SEED, label="Class",
                                                visible=bool(classes) and not diffusion, interactive=not pending,
                                                info="a conditional GAN draws this class", elem_id="gan-class")
                        tags = gr.Textbox(label="Tags", placeholder="optional: day, portrait", elem_id="gen-tags")
                        # until the model's own settings have arrived, the placeholders must not be sent
                        go = gr.Button("Generate", variant="primary", interactive=not pending,
                                       elem_id="generate-btn")
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(format="png", label="Results (click one to name it)", columns=4, height=420,
                                             object_fit="contain", elem_id="gen-gallery")
                        with gr.Row():
                            selected = gr.Textbox(label="Selected id", interactive=False, scale=3,
                                                  elem_id="gen-selected")
                            item_name = gr.Textbox(label="Name", placeholder="cat", scale=2, elem_id="gen-name")
                            item_tags = gr.Textbox(label="Tags", placeholder="day", scale=2, elem_id="gen-tag")
                            save = gr.Button("Save", scale=1, min_width=80, elem_id="gen-save")
                        gen_status = gr.Markdown("", elem_classes="ls-hint", elem_id="gen-status")
                        with gr.Accordion("Details", open=False):
                            gen_info = gr.JSON(label="Stored", elem_id="gen-info")

            # ---------------------------------------------------------------- Library
            with gr.Tab("Library", id="library", elem_id="tab-library") as tab_library:
                with gr.Row():
                    f_model = gr.Dropdown([], label="Model", allow_custom_value=True, scale=2)
                    f_space = gr.Dropdown(SPACE_KINDS, value="", label="Space", scale=1)
                    f_tag = gr.Dropdown([], label="Tag", allow_custom_value=True, scale=1)
                    f_text = gr.Textbox(label="Search", placeholder="name, prompt, expression or id", scale=3,
                                        elem_id="lib-search")
                    search = gr.Button("Search", scale=1, min_width=90, elem_id="lib-search-btn")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        lib_gallery = gr.Gallery(format="png", label="Generations (click one to open it)", columns=6, height=360,
                                                 object_fit="contain", allow_preview=False, fit_columns=False,
                                                 elem_id="lib-gallery")
                        lib_table = gr.Dataframe(headers=["label", "kind", "space", "model", "made by", "tags",
                                                          "id"], interactive=False, label="Latents and vectors",
                                                 max_height=220, wrap=True, elem_id="lib-table",
                                                 column_widths=["14%", "9%", "25%", "12%", "18%", "10%", "12%"])
                        with gr.Row(equal_height=True):
                            lib_newer = gr.Button("‹ Newer", size="sm", min_width=80, interactive=False,
                                                  elem_id="lib-newer")
                            lib_footer = gr.Markdown("", elem_classes="ls-hint", elem_id="lib-footer")
                            lib_older = gr.Button("Older ›", size="sm", min_width=80, interactive=False,
                                                  elem_id="lib-older")
                    with gr.Column(scale=2):
                        sel_id = gr.Textbox(label="Selected", interactive=False, elem_id="lib-selected")
                        preview = gr.Image(format="png", label="Picture", height=200, interactive=False, elem_id="lib-preview")
                        parents = gr.Gallery(format="png", label="Made from (click to open)", columns=6, height=110,
                                             allow_preview=False, object_fit="contain", fit_columns=False,
                                             elem_id="lib-parents")
                        with gr.Row():
                            rerender = gr.Button("Re-render", size="sm", elem_id="lib-rerender")
                            delete = gr.Button("Delete…", variant="stop", size="sm", elem_id="lib-delete")
                        with gr.Row(equal_height=True):
                            fmt = gr.Radio(["safetensors", "latent"], value="safetensors", show_label=False,
                                           container=False, scale=2, elem_id="lib-fmt",
                                           info="latent: a ComfyUI .latent (VAE latents only)")
                            export = gr.Button("Export", size="sm", scale=1, elem_id="lib-export")
                        with gr.Column(visible=False) as confirm_row:
                            confirm_text = gr.Markdown()
                            with gr.Row():
                                confirm = gr.Button("Yes, delete", variant="stop", size="sm", elem_id="lib-confirm")
                                cancel = gr.Button("Cancel", size="sm", elem_id="lib-cancel")
                        export_file = gr.File(label="Download", visible=False, elem_id="lib-file")
                        with gr.Accordion("Metadata and lineage", open=True):
                            meta = gr.JSON(max_height=380, elem_id="lib-meta")
                with gr.Accordion("Import and encode", open=False):
                    with gr.Row(equal_height=False):
                        with gr.Column():
                            up_file = gr.File(label="A studio PNG (its recipe comes back), .safetensors or .latent",
                                              file_types=[".png", ".safetensors", ".latent"], elem_id="up-file")
                            with gr.Row():
                                up_name = gr.Textbox(label="Name", placeholder="optional")
                                up_btn = gr.Button("Import", elem_id="up-btn")
                            up_recipe = gr.JSON(label="Recipe in the PNG")
                            up_info = gr.JSON(label="Stored")
                        with gr.Column():
                            enc_image = gr.Image(format="png", type="filepath", label="A picture to encode into VAE space",
                                                 height=200, elem_id="enc-image")
                            with gr.Row():
                                enc_model = model_picker()
                                enc_name = gr.Textbox(label="Name", placeholder="optional")
                                enc_btn = gr.Button("Encode", elem_id="enc-btn")
                            enc_info = gr.JSON(label="Stored latent")
                        with gr.Column():
                            inv_image = gr.Image(format="png", type="filepath", label="A picture to invert (to edit it)",
                                                 height=200, elem_id="inv-image")
                            with gr.Row():
                                inv_model = model_picker()
                                inv_name = gr.Textbox(label="Name", placeholder="optional", elem_id="inv-name")
                            with gr.Row():
                                inv_prompt = gr.Textbox(label="Prompt (diffusion)", placeholder="optional")
                                inv_steps = gr.Number(0, precision=0, label="Steps", minimum=0,
                                                      info="0: 100 DDIM / 300 GAN")
                                inv_btn = gr.Button("Invert", elem_id="inv-btn")
                            inv_line = gr.Markdown(elem_id="inv-line")
                            inv_picture = gr.Image(format="png", label="Re-rendered", height=160, interactive=False,
                                                   elem_id="inv-picture")
                            inv_info = gr.JSON(label="Stored generation")

            # ---------------------------------------------------------------- Interpolate
            with gr.Tab("Interpolate", id="interpolate", elem_id="tab-interpolate") as tab_interp:
                with gr.Row():
                    keys = gr.Dropdown([], multiselect=True, allow_custom_value=True, scale=4,
                                       label="Keyframes, in order (two or more generations)", elem_id="keys")
                    frames = gr.Slider(2, MAX_FRAMES, value=12, step=1, label="Frames", scale=2, elem_id="frames")
                    fps = gr.Slider(1, 30, value=8, step=1, label="FPS", scale=1)
                with gr.Row():
                    method = gr.Radio(list(METHODS), value="slerp", label="Path", elem_id="method")
                    easing = gr.Radio(list(EASINGS), value="ease-in-out", label="Easing", elem_id="easing")
                    interp = gr.Button("Interpolate", variant="primary", elem_id="interp-btn")
                strip = gr.Gallery(format="png", label="Frames (click one to store it)", columns=12, height=190,
                                   object_fit="contain", allow_preview=False, fit_columns=False, elem_id="strip")
                with gr.Row(equal_height=False):
                    gif = gr.Image(format="png", label="GIF", height=260, interactive=False, elem_id="gif")
                    mp4 = gr.Video(label="MP4", height=260, interactive=False, elem_id="mp4")
                    with gr.Column():
                        frame_index = gr.Number(label="Frame", precision=0, value=0, minimum=0, elem_id="frame-index")
                        frame_name = gr.Textbox(label="Name", placeholder="midway", elem_id="frame-name")
                        store = gr.Button("Store this frame", elem_id="frame-store")
                        frame_info = gr.JSON(label="Stored frame", max_height=200, elem_id="frame-info")

            # ---------------------------------------------------------------- Attributes
            with gr.Tab("Attributes", id="attributes", elem_id="tab-attributes") as tab_attr:
                gr.Markdown("**Build** a direction from examples: `mean(set B) − mean(set A)` in one role "
                            "(or a linear boundary between the sets), then **apply** it with a strength.",
                            elem_classes="ls-hint")
                with gr.Row():
                    set_a = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Set A (without)",
                                        elem_id="set-a")
                    set_b = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Set B (with)",
                                        elem_id="set-b")
                with gr.Row(equal_height=True):
                    role = gr.Dropdown(["default"], value="default", label="Role", allow_custom_value=True,
                                       scale=1, elem_id="role")
                    vec_method = gr.Radio(["mean", "boundary"], value="mean", label="Method", scale=1)
                    vec_name = gr.Textbox(label="Vector name", placeholder="smile", scale=2, elem_id="vec-name")
                    vec_attr = gr.Textbox(label="Attribute (for scoring)", placeholder="style:noto:twemoji",
                                          scale=2, elem_id="vec-attr")
                    build_btn = gr.Button("Build vector", scale=1, elem_id="build-btn")
                vec_info = gr.JSON(label="Vector", max_height=150, elem_id="vec-info")
                with gr.Accordion("More ways to make a vector: prompt pair, discovery, conditioning", open=False):
                    gr.Markdown("**Prompt pair** (text-conditioned models): the mean text-embedding difference "
                                "of the templates filled with the two phrases.", elem_classes="ls-hint")
                    with gr.Row(equal_height=True):
                        pp_def = gr.Dropdown(studio.definitions(), value=None, label="Start from",
                                             info="prompts/vectors/", scale=1, elem_id="pp-def")
                        pp_from = gr.Textbox(label="From phrase", placeholder="day", scale=1, elem_id="pp-from")
                        pp_to = gr.Textbox(label="To phrase", placeholder="night", scale=1, elem_id="pp-to")
                        pp_templates = gr.Textbox(label="Templates, one per line ({} = the phrase)", lines=3,
                                                  placeholder="a photo of a street at {}", scale=3,
                                                  elem_id="pp-templates")
                    with gr.Row(equal_height=True):
                        pp_model = model_picker(scale=2)
                        pp_attr = gr.Textbox(label="Attribute (for scoring)", placeholder="style:noto:twemoji",
                                             scale=2, elem_id="pp-attr")
                        pp_name = gr.Textbox(label="Vector name", placeholder="day_to_night", scale=2,
                                             elem_id="pp-name")
                        pp_btn = gr.Button("Build from prompts", scale=1, elem_id="pp-btn")
                    gr.Markdown("**Discover** (GANSpace): principal directions of sampled w, or of the "
                                "embeddings of prompts, with the share of variance each explains; name the "
                                "ones that do something.", elem_classes="ls-hint")
                    with gr.Row(equal_height=True):
                        pc_model = model_picker(scale=2)
                        pc_space = gr.Radio(["w", "text"], value="text" if diffusion else "w", label="Space",
                                            scale=1)
                        pc_k = gr.Slider(1, 16, value=6, step=1, label="Directions", scale=2)
                        pc_prefix = gr.Textbox(label="Name prefix", placeholder="pc", scale=1, elem_id="pc-prefix")
                        pc_btn = gr.Button("Discover", scale=1, elem_id="pc-btn")
                    pc_prompts = gr.Textbox(label="Prompts for text space, one per line", lines=2,
                                            placeholder="empty: the emoji prompts of prompts/emoji_prompts.txt")
                    pc_table = gr.Dataframe(headers=["vector", "id", "explained variance %"], interactive=False,
                                            label="Directions", max_height=200, elem_id="pc-table")
                    gr.Markdown("**Condition** (InterFaceGAN): remove from a vector its components along "
                                "others, so an edit spares what they change.", elem_classes="ls-hint")
                    with gr.Row(equal_height=True):
                        cond_vec = gr.Dropdown([], label="Vector", allow_custom_value=True, scale=2,
                                               elem_id="cond-vec")
                        cond_on = gr.Dropdown([], multiselect=True, allow_custom_value=True,
                                              label="Without its components along", scale=3, elem_id="cond-on")
                        cond_name = gr.Textbox(label="Name", placeholder="style_only", scale=2, elem_id="cond-name")
                        cond_btn = gr.Button("Condition", scale=1, elem_id="cond-btn")
                with gr.Row():
                    vector = gr.Dropdown([], label="Vector", allow_custom_value=True, scale=2, elem_id="vector")
                    targets = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Apply to",
                                          scale=3, elem_id="targets")
                    strength = gr.Slider(-3, 3, value=1.0, step=0.05, label="Strength", scale=2,
                                         elem_id="strength")
                    mode = gr.Radio(["latent", "hspace", "sdedit"], value="latent", label="Mode", scale=2)
                with gr.Row():
                    sweep_from = gr.Number(value=-1.0, label="Sweep from", min_width=90)
                    sweep_to = gr.Number(value=1.0, label="Sweep to", min_width=90)
                    sweep_n = gr.Slider(0, MAX_SWEEP, value=5, step=1, label="Sweep points")
                    applied_name = gr.Textbox(label="Result name", placeholder="optional")
                    apply_btn = gr.Button("Apply", variant="primary", elem_id="apply-btn")
                with gr.Row(equal_height=False):
                    applied = gr.Gallery(format="png", label="Applied (stored)", columns=3, height=170, object_fit="contain",
                                         fit_columns=False, elem_id="applied", scale=2)
                    sweep = gr.Gallery(format="png", label="Strength sweep (first target)", columns=MAX_SWEEP // 2, height=170,
                                       object_fit="contain", allow_preview=False, fit_columns=False,
                                       elem_id="sweep", scale=3)
                applied_info = gr.JSON(label="Stored results", visible=False)
                scoring = studio.can_score()
                with gr.Accordion("Score with the emoji-judge", open=False, visible=scoring):
                    gr.Markdown("Samples emoji prompts from the vector's model, applies the vector at each strength "
                                "and asks the judge: how often did the attribute flip to its target, was the other "
                                "attribute kept, how much did the pixels change.", elem_classes="ls-hint")
                    with gr.Row():
                        score_strengths = gr.Textbox("0, 0.5, 1, 1.5, 2", label="Strengths", scale=2,
                                                     elem_id="score-strengths")
                        score_n = gr.Slider(2, 64, value=12, step=1, label="Samples per strength", scale=2,
                                            elem_id="score-n")
                        score_seed = gr.Number(1000, precision=0, label="First seed", scale=1)
                        score_sdedit = gr.Slider(0, 1, value=0, step=0.05, scale=2, elem_id="score-sdedit",
                                                 label="SDEdit from", info="diffusion; 0: off")
                        score_psi = gr.Textbox("", label="Truncation psi", info="GAN; empty: the model's",
                                               scale=1, placeholder="e.g. 0.5", elem_id="score-psi")
                        score_btn = gr.Button("Score the vector", scale=1, elem_id="score-btn")
                    with gr.Row(equal_height=False):
                        score_plot = gr.Image(format="png", label="Scores", interactive=False, scale=3, elem_id="score-plot")
                        with gr.Column(scale=2):
                            score_strip = gr.Image(format="png", label="Examples (columns: original, then strengths)",
                                                   interactive=False)
                            score_table = gr.Dataframe(headers=["strength", "flip rate", "kept", "pixel change",
                                                                "n"], interactive=False, label="Scores")
                gr.Markdown("Scoring needs the emoji-judge (pipelines/embedded/emoji-judge) and matplotlib; "
                            "not available here.", visible=not scoring, elem_classes="ls-hint")

            # ---------------------------------------------------------------- Recipe
            with gr.Tab("Recipe", id="recipe", elem_id="tab-recipe") as tab_recipe:
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        expr = gr.Textbox(label="Expression", lines=2, elem_id="expr",
                                          placeholder="slerp(@a, @b, 0.5) + 0.8 * @smile")
                        check = gr.Markdown(studio.check_expression(""), elem_classes="ls-check",
                                            elem_id="expr-check")
                        with gr.Row():
                            names = gr.Dropdown([], value=None, label="Insert a stored name", scale=2, elem_id="names")
                            fn_pick = gr.Dropdown(["slerp(@a, @b, 0.5)", "lerp(@a, @b, 0.5)", "blend(@a, @b, 0.5)",
                                                   "mean(@a, @b)", "normalize(@x)", "@x + 1.0 * @v"],
                                                  value=None, label="Insert a function", scale=2)
                            expr_name = gr.Textbox(label="Store as", placeholder="optional name", scale=2,
                                                   elem_id="expr-name")
                            render_btn = gr.Button("Evaluate and render", variant="primary", scale=1,
                                                   elem_id="render-btn")
                    with gr.Column(scale=2):
                        expr_image = gr.Image(format="png", label="Result", height=260, interactive=False, elem_id="expr-image")
                        expr_info = gr.JSON(label="Stored", max_height=220, elem_id="expr-info")
                with gr.Accordion("Recipe files (YAML)", open=True):
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=3):
                            code = gr.Code(recipe_template(studio.model), language="yaml", lines=12,
                                           label="Recipe", elem_id="recipe-code")
                            code_check = gr.Markdown(studio.check_recipe(recipe_template(studio.model)),
                                                     elem_classes="ls-check")
                        with gr.Column(scale=1, min_width=220):
                            recipe_up = gr.File(label="Load a recipe", file_types=[".yaml", ".yml"], height=110)
                            recipe_file = gr.Textbox(value="recipe.yaml", label="Save as")
                            save_recipe = gr.Button("Save for download")
                            recipe_down = gr.File(label="Download", visible=False)
                            run_btn = gr.Button("Run recipe", variant="primary", elem_id="run-recipe")
                    run_gallery = gr.Gallery(format="png", label="Rendered", columns=10, height=170, object_fit="contain",
                                             fit_columns=False, elem_id="run-gallery")
                    run_info = gr.JSON(label="Run", max_height=200)

        # ====================================================================== wiring
        def refresh(model_spec: str | None) -> tuple:
            c = studio.choices()
            return (gr.update(choices=c["generations"]), gr.update(choices=c["sources"]),
                    gr.update(choices=c["sources"]), gr.update(choices=c["vectors"]),
                    gr.update(choices=c["generations"]), gr.update(choices=c["names"]),
                    gr.update(choices=[""] + c["models"]), gr.update(choices=[""] + c["tags"]),
                    studio.title(model_spec), gr.update(choices=c["vectors"]), gr.update(choices=c["vectors"]))

        pickers = [keys, set_a, set_b, vector, targets, names, f_model, f_tag, title, cond_vec, cond_on]

        def on_model(model: str, current: str, progress=gr.Progress()) -> tuple:
            """Show the controls of the picked model; if it cannot load, say why and go back to the last one."""
            try:
                info = studio.model_info(model, progress)
            except gr.Error as exc:
                gr.Warning(f"{model}: {exc.message}")
                return (current, *(gr.update() for _ in range(5)), studio.title(current), current)
            d, is_diffusion, label = info["defaults"], info["family"] == "diffusion", info["guidance_label"]
            return (info["model"], gr.update(visible=is_diffusion),
                    gr.update(visible=is_diffusion, value=d.get("steps"), interactive=True),
                    gr.update(visible=label is not None, interactive=True,
                              **({"value": d["guidance"], "label": label} if label is not None else {})),
                    gr.update(visible=not is_diffusion, value=d.get("truncation", 1.0), interactive=True),
                    gr.update(choices=[BY_SEED, *info["classes"]], value=BY_SEED, interactive=True,
                              visible=bool(info["classes"])),
                    studio.title(info["model"]), info["model"])

        demo.load(refresh, model, pickers, **quiet)
        if pending:  # the page's first open loads the model; its settings arrive when it is ready
            demo.load(on_model, [current_model, current_model],
                      [model, prompt, steps, guidance, truncation, gan_class, title, current_model], **quiet).then(
                lambda: gr.update(interactive=True), None, go, **quiet)
        for tab in (tab_generate, tab_library, tab_interp, tab_attr, tab_recipe):
            tab.select(refresh, model, pickers, **quiet)

        # Generate
        model.input(on_model, [model, current_model],
                    [model, prompt, steps, guidance, truncation, gan_class, title, current_model],
                    api_name="model_info")
        dice.click(None, None, seed, js="() => Math.floor(Math.random() * 2147483647)", **private)
        def stored_line(info: Any) -> str:
            if isinstance(info, dict) and "names" in info:  # from name_item
                return (f"Saved **{info['id'][:12]}** · names: {', '.join(info['names']) or '-'} · "
                        f"tags: {', '.join(info['tags']) or '-'}")
            if isinstance(info, list) and info:
                seeds = [i.get("seed") for i in info]
                return (f"Stored {len(info)} generation{'s' if len(info) > 1 else ''} of {info[0].get('model')} "
                        f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}); "
                        "click a picture to name or tag it.")
            return ""

        go.click(studio.generate, [model, prompt, seed, count, steps, guidance, truncation, tags, gan_class],
                 [gallery, gen_info, gen_ids], api_name="generate", scroll_to_output=True
                 ).then(stored_line, gen_info, gen_status, **quiet).then(studio.title, model, title, **quiet)

        def pick_generated(ids: list[str], evt: gr.SelectData) -> str:
            return ids[evt.index] if ids and 0 <= evt.index < len(ids) else ""

        gallery.select(pick_generated, gen_ids, selected, **quiet)
        save.click(studio.name_item, [selected, item_name, item_tags], gen_info, api_name="name_item").then(
            stored_line, gen_info, gen_status, **quiet)
        # for scripts: this session's last generated ids, read from its own gr.State
        gr.Button(visible=False).click(studio.last_results, gen_ids, gen_info, api_name="last_results")

        # Library: a page at a time. This user's place is the cursors of the pages before the shown one
        # (``lib_pages``, the first None) and the next page's (``lib_next``); new filters start over.
        lib_pages, lib_next = gr.State([None]), gr.State(None)
        lib_outputs = [lib_gallery, lib_table, lib_gen_ids, lib_other_ids, lib_footer, lib_next, lib_pages,
                       lib_newer, lib_older]
        lib_inputs = [f_model, f_space, f_tag, f_text]

        def show_page(filters: tuple, pages: list, progress: Any) -> tuple:
            *shown, footer, following = studio.library_view(*filters, pages[-1], len(pages), progress=progress)
            return (*shown, footer, following, pages, gr.update(interactive=len(pages) > 1),
                    gr.update(interactive=following is not None))

        def library_view(model_f, space_f, tag_f, text_f, progress=gr.Progress()) -> tuple:
            return show_page((model_f, space_f, tag_f, text_f), [None], progress)

        def older(model_f, space_f, tag_f, text_f, pages, following, progress=gr.Progress()) -> tuple:
            return show_page((model_f, space_f, tag_f, text_f), [*pages, following] if following else pages, progress)

        def newer(model_f, space_f, tag_f, text_f, pages, progress=gr.Progress()) -> tuple:
            return show_page((model_f, space_f, tag_f, text_f), pages[:-1] or [None], progress)

        # library views run one at a time, in the order asked, so the last filter asked for is the one shown
        # (a search right after opening the tab never lands before the tab's own, unfiltered, view)
        in_order: dict[str, Any] = {"concurrency_id": "library-view", "concurrency_limit": 1}
        tab_library.select(library_view, lib_inputs, lib_outputs, **in_order, **private)
        search.click(library_view, lib_inputs, lib_outputs, api_name="library", **in_order)
        f_text.submit(library_view, lib_inputs, lib_outputs, **in_order, **private)
        for f in (f_model, f_space, f_tag):
            f.input(library_view, lib_inputs, lib_outputs, **in_order, **private)
        lib_older.click(older, [*lib_inputs, lib_pages, lib_next], lib_outputs, **in_order, **private)
        lib_newer.click(newer, [*lib_inputs, lib_pages], lib_outputs, **in_order, **private)
        details_out = [meta, parents, parent_ids, preview]

        def pick_index(ids: list[str], evt: gr.SelectData) -> str:
            i = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            return ids[i] if ids and 0 <= i < len(ids) else ""

        gr.Button(visible=False).click(studio.details, sel_id, details_out, api_name="details")
        for source, ids in ((lib_gallery, lib_gen_ids), (lib_table, lib_other_ids), (parents, parent_ids)):
            source.select(pick_index, ids, sel_id, **quiet).then(studio.details, sel_id, details_out, **private)
        rerender.click(studio.rerender, sel_id, preview, api_name="rerender")
        export.click(studio.export, [sel_id, fmt], export_file, api_name="export").then(
            lambda: gr.update(visible=True), None, export_file, **private)

        def ask(ref: str) -> tuple:
            if not ref:
                raise gr.Error("select an object first")
            return gr.update(visible=True), f"Delete **{ref[:12]}**? Objects made from it keep their lineage ids."

        delete.click(ask, sel_id, [confirm_row, confirm_text], **private)
        cancel.click(lambda: gr.update(visible=False), None, confirm_row, **private)
        confirm.click(studio.delete, sel_id, sel_id, api_name="delete").then(
            lambda: (gr.update(visible=False), None, [], None), None, [confirm_row, meta, parents, preview],
            **private).then(library_view, lib_inputs, lib_outputs, **in_order, **private).then(
            studio.title, model, title, **quiet)
        # what an upload stored shows up in the library at once
        up_btn.click(studio.import_upload, [up_file, up_name, model], [up_info, up_recipe, preview],
                     api_name="import_file").then(studio.title, model, title, **quiet).then(
            library_view, lib_inputs, lib_outputs, **in_order, **private)
        enc_btn.click(studio.encode_upload, [enc_image, enc_model, enc_name], enc_info, api_name="encode_image"
                      ).then(studio.title, model, title, **quiet).then(
            library_view, lib_inputs, lib_outputs, **in_order, **private)
        inv_btn.click(studio.invert_upload, [inv_image, inv_model, inv_prompt, inv_steps, inv_name],
                      [inv_info, inv_picture, inv_line], api_name="invert_image").then(
            studio.title, model, title, **quiet).then(library_view, lib_inputs, lib_outputs, **in_order, **private)

        # Interpolate
        interp.click(studio.interpolate, [keys, frames, method, easing, fps], [strip, gif, mp4, plan],
                     api_name="interpolate", scroll_to_output=True)

        def pick_frame(evt: gr.SelectData) -> int:
            return evt.index

        strip.select(pick_frame, None, frame_index, **quiet)
        store.click(studio.store_frame, [plan, frame_index, frame_name], frame_info, api_name="store_frame").then(
            studio.title, model, title, **quiet)

        # Attributes
        def roles_for(a: list[str], b: list[str]) -> Any:
            roles = studio.roles_of(list(a or []) + list(b or []))
            return gr.update(choices=["default", *roles])

        for s in (set_a, set_b):
            s.input(roles_for, [set_a, set_b], role, **private)
        build_btn.click(studio.build_vector, [set_a, set_b, role, vec_name, vec_method, vec_attr], vec_info,
                        api_name="build_vector").then(refresh, model, pickers, **quiet)
        apply_btn.click(studio.apply_vector, [vector, targets, strength, sweep_from, sweep_to, sweep_n, mode,
                                              applied_name], [applied, sweep, applied_info],
                        api_name="apply_vector", scroll_to_output=True).then(studio.title, model, title, **quiet)

        pp_def.input(studio.definition_fields, pp_def, [pp_from, pp_to, pp_templates, pp_attr, pp_name], **private)
        pp_btn.click(studio.prompt_vector, [pp_model, pp_from, pp_to, pp_templates, pp_attr, pp_name], vec_info,
                     api_name="prompt_vector").then(refresh, model, pickers, **quiet)
        pc_btn.click(studio.discover_vectors, [pc_model, pc_space, pc_k, pc_prefix, pc_prompts], pc_table,
                     api_name="discover_vectors").then(refresh, model, pickers, **quiet)
        cond_btn.click(studio.condition_vector, [cond_vec, cond_on, cond_name], vec_info,
                       api_name="condition_vector").then(refresh, model, pickers, **quiet)
        score_btn.click(studio.score_vector, [vector, score_strengths, score_n, score_seed, score_sdedit, score_psi],
                        [score_plot, score_strip, score_table], api_name="score_vector")

        # Recipe
        expr.change(studio.check_expression, expr, check, api_name="check_expression", show_progress="hidden",
                    trigger_mode="always_last")

        def insert(text: str | None, piece: str | None) -> tuple:
            if not piece:
                return gr.update(), gr.update()
            return (f"{text.rstrip()} {piece}" if text and text.strip() else piece), None

        def insert_name(text: str | None, name: str | None) -> tuple:
            return insert(text, f"@{name}" if name else None)

        names.input(insert_name, [expr, names], [expr, names], **private)
        fn_pick.input(insert, [expr, fn_pick], [expr, fn_pick], **private)
        render_btn.click(studio.render_expression, [expr, expr_name], [expr_image, expr_info],
                         api_name="render_expression").then(studio.title, model, title, **quiet)
        expr.submit(studio.render_expression, [expr, expr_name], [expr_image, expr_info], **private)
        code.change(studio.check_recipe, code, code_check, show_progress="hidden", trigger_mode="always_last",
                    **private)
        recipe_up.upload(studio.load_recipe, recipe_up, [code, code_check], api_name="load_recipe")
        save_recipe.click(studio.save_recipe, [code, recipe_file], recipe_down, api_name="save_recipe").then(
            lambda: gr.update(visible=True), None, recipe_down, **private)
        run_btn.click(studio.run_recipe, code, [run_gallery, run_info], api_name="render_recipe").then(
            studio.title, model, title, **quiet)
    return demo
