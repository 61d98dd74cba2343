"""
transformers' own common tests over every SpidR class, the way an in-tree model's test file runs them (modelled on
transformers' tests/models/hubert/test_modeling_hubert.py): `ModelTesterMixin` over the six model classes, in the
default variant (post-LN, LayerNorm feature encoder, SpidR heads) and the stable-layer-norm one (pre-LN, GroupNorm
feature encoder, DinoSR heads), `ConfigTester` over `SpidrConfig`, `SequenceFeatureExtractionTestMixin` over
`SpidrFeatureExtractor`.

The mixins are those of the installed transformers version, unpacked from its source distribution by
`scripts/install.sh dev` (scripts/fetch_transformers_tests.py) into a cache folder outside the repository. Without them
this module is one failing test that says how to get them: never a silent skip.

The source distribution ships tests/*.py but not the three helper modules they import; they are stood in for here
(`_install_stand_ins`, each says why it is faithful). Every test skipped or overridden below says why in one line.
"""

import math
import random
import sys
import types
import unittest
from importlib import import_module
from pathlib import Path
from unittest import mock

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
fetch = load_script(ROOT / "scripts" / "fetch_transformers_tests.py", "fetch_transformers_tests")
TESTS_FOLDER = fetch.transformers_tests_folder()
PACKAGE = "transformers_common_tests"  # the name transformers' tests/ folder is imported under


def _install_stand_ins() -> None:
    """
    Modules that transformers' test files import but its source distribution does not ship, stood in for:
    - `generation.test_utils.GenerationTesterMixin`: only read by `test_generation_tester_mixin_inheritance`, which
      checks that a model that cannot generate (SpidR) does *not* inherit it: an empty class is the real answer.
    - `exporters.test_export.ExportTesterMixin`: the base of `ModelTesterMixin`; every test it adds (torch.export,
      ONNX, ExecuTorch) is `@slow` and skipped without RUN_SLOW, for in-tree models too. Empty here: not run.
    - `utils.test_configuration_utils.config_common_kwargs`: the common `PreTrainedConfig` keyword arguments
      `ConfigTester.check_config_arguments_init` sets to non-default values and reads back; ours below.
    """
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(TESTS_FOLDER / "tests")]
    sys.modules[PACKAGE] = package
    stand_ins = {
        "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
        "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
        "utils.test_configuration_utils": {
            "config_common_kwargs": {
                "return_dict": False,
                "output_hidden_states": True,
                "output_attentions": True,
                "dtype": "float16",
                "chunk_size_feed_forward": 5,
                "architectures": ["SpidrModel"],
                "finetuning_task": "phone recognition",
                "id2label": {0: "silence", 1: "speech"},
                "label2id": {"silence": 0, "speech": 1},
                "problem_type": "single_label_classification",
                "tie_word_embeddings": False,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "sep_token_id": 3,
                "pad_token_id": 4,
            }
        },
    }
    for name, attributes in stand_ins.items():
        parent = f"{PACKAGE}.{name.split('.')[0]}"
        if parent not in sys.modules:
            sys.modules[parent] = types.ModuleType(parent)
            sys.modules[parent].__path__ = []
        module = types.ModuleType(f"{PACKAGE}.{name}")
        module.__dict__.update(attributes)
        sys.modules[module.__name__] = module


def _load_common_tests() -> tuple[types.ModuleType, ...] | str:
    """transformers' three common-test modules, or why they cannot be loaded (one line)."""
    if not fetch.is_complete(TESTS_FOLDER):
        return (
            f"transformers' common model tests are not in {TESTS_FOLDER}: run `scripts/install.sh dev` (or "
            "`python scripts/fetch_transformers_tests.py`) to unpack them from the installed version's sdist"
        )
    _install_stand_ins()
    names = ("test_modeling_common", "test_configuration_common", "test_sequence_feature_extraction_common")
    try:
        return tuple(import_module(f"{PACKAGE}.{name}") for name in names)
    except ImportError as error:  # a transformers version whose tests import what is not stood in for here
        return f"transformers' common model tests in {TESTS_FOLDER} do not import: {error!r}"


COMMON_TESTS = _load_common_tests()

if isinstance(COMMON_TESTS, str):
    # One failing test rather than a collection error, which would stop the whole run

    def test_transformers_common_tests_are_installed():
        pytest.fail(COMMON_TESTS, pytrace=False)

else:
    import torch
    from transformers.models.auto import modeling_auto
    from transformers.testing_utils import torch_device
    from transformers.utils import logging as transformers_logging

    from spidr_hf import (
        SpidrConfig,
        SpidrFeatureExtractor,
        SpidrForAudioFrameClassification,
        SpidrForCTC,
        SpidrForPreTraining,
        SpidrForSequenceClassification,
        SpidrForXVector,
        SpidrModel,
    )

    modeling_common, configuration_common, sequence_common = COMMON_TESTS
    ModelTesterMixin = modeling_common.ModelTesterMixin
    floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor
    random_attention_mask = modeling_common.random_attention_mask

    # Where an in-tree model is named in transformers' Auto mappings, which the mixin reads to know what each class
    # is (which ones take labels, which have no loss, which drop the attention mask); set for these tests only
    AUTO_MAPPING_NAMES = {
        "MODEL_MAPPING_NAMES": "SpidrModel",
        "MODEL_FOR_PRETRAINING_MAPPING_NAMES": "SpidrForPreTraining",
        "MODEL_FOR_CTC_MAPPING_NAMES": "SpidrForCTC",
        "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES": "SpidrForSequenceClassification",
        "MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES": "SpidrForAudioFrameClassification",
        "MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES": "SpidrForXVector",
    }

    class SpidrModelTester:
        """Tiny SpidR configurations and inputs, as HubertModelTester's (a few kilo-parameters, 14 frames)."""

        def __init__(
            self,
            parent,
            batch_size=13,
            seq_length=1024,
            is_training=True,
            hidden_size=16,
            feat_extract_norm="layer",
            conv_dim=(32, 32, 32),
            conv_stride=(4, 4, 4),
            conv_kernel=(8, 8, 8),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            conv_pos_depth=2,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=20,
            vocab_size=32,
            do_stable_layer_norm=False,
            objective="spidr",
        ):
            self.parent = parent
            self.batch_size, self.seq_length, self.is_training = batch_size, seq_length, is_training
            self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
            self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
            self.vocab_size = vocab_size
            self.config_kwargs = {
                "hidden_size": hidden_size,
                "feat_extract_norm": feat_extract_norm,
                "conv_dim": conv_dim,
                "conv_stride": conv_stride,
                "conv_kernel": conv_kernel,
                "num_conv_pos_embeddings": num_conv_pos_embeddings,
                "num_conv_pos_embedding_groups": num_conv_pos_embedding_groups,
                "conv_pos_depth": conv_pos_depth,
                "num_hidden_layers": num_hidden_layers,
                "num_attention_heads": num_attention_heads,
                "intermediate_size": intermediate_size,
                "do_stable_layer_norm": do_stable_layer_norm,
                "objective": objective,
                "codebook_size": 8,
                "mask_time_length": 2,
                "layerdrop": 0.0,
                "vocab_size": vocab_size,
                "pad_token_id": 0,
                "classifier_proj_size": 8,
                "tdnn_dim": (16, 16),
                "tdnn_kernel": (3, 3),
                "tdnn_dilation": (1, 2),
                "xvector_output_dim": 8,
            }
            frames = seq_length
            for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
                frames = (frames - kernel) // stride + 1
            self.output_seq_length = self.encoder_seq_length = frames

        def get_config(self) -> SpidrConfig:
            return SpidrConfig(**self.config_kwargs)

        def prepare_config_and_inputs(self):
            input_values = floats_tensor([self.batch_size, self.seq_length], scale=1.0)
            attention_mask = random_attention_mask([self.batch_size, self.seq_length])
            return self.get_config(), input_values, attention_mask

        def prepare_config_and_inputs_for_common(self):
            config, input_values, attention_mask = self.prepare_config_and_inputs()
            return config, {"input_values": input_values, "attention_mask": attention_mask}

        def padded_inputs(self, input_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
            """The first three items, right-padded to a quarter, half and all of their length, with their mask."""
            input_values = input_values[:3].clone()
            attention_mask = torch.ones(input_values.shape, device=torch_device, dtype=torch.long)
            lengths = [input_values.shape[-1] // i for i in (4, 2, 1)]
            for i, length in enumerate(lengths):
                input_values[i, length:] = 0.0
                attention_mask[i, length:] = 0
            return input_values, attention_mask, lengths

        def create_and_check_model(self, config, input_values, attention_mask):
            model = SpidrModel(config).to(torch_device).eval()
            result = model(input_values, attention_mask=attention_mask)
            self.parent.assertEqual(
                result.last_hidden_state.shape, (self.batch_size, self.output_seq_length, self.hidden_size)
            )

        def create_and_check_batch_inference(self, config, input_values, *args):
            model = SpidrModel(config).to(torch_device).eval()
            input_values, attention_mask, lengths = self.padded_inputs(input_values)
            batch_outputs = model(input_values, attention_mask=attention_mask).last_hidden_state
            for i, length in enumerate(lengths):
                output = model(input_values[i : i + 1, :length]).last_hidden_state
                torch.testing.assert_close(batch_outputs[i : i + 1, : output.shape[1]], output, atol=1e-3, rtol=0)

        def check_ctc_loss(self, config, input_values, *args):
            model = SpidrForCTC(config).to(torch_device).eval()
            input_values, attention_mask, lengths = self.padded_inputs(input_values)
            max_length_labels = model._get_feat_extract_output_lengths(torch.tensor(lengths))
            labels = ids_tensor((input_values.shape[0], min(max_length_labels) - 1), model.config.vocab_size)
            model.config.ctc_loss_reduction = "sum"
            sum_loss = model(input_values, attention_mask=attention_mask, labels=labels).loss.item()
            model.config.ctc_loss_reduction = "mean"
            mean_loss = model(input_values, attention_mask=attention_mask, labels=labels).loss.item()
            self.parent.assertTrue(math.isfinite(sum_loss) and math.isfinite(mean_loss))
            self.parent.assertNotAlmostEqual(sum_loss, mean_loss)

        def check_seq_classifier_loss(self, config, input_values, *args):
            model = SpidrForSequenceClassification(config).to(torch_device).eval()
            input_values, attention_mask, _ = self.padded_inputs(input_values)
            labels = ids_tensor((input_values.shape[0], 1), len(model.config.id2label))
            masked_loss = model(input_values, attention_mask=attention_mask, labels=labels).loss.item()
            unmasked_loss = model(input_values, labels=labels).loss.item()
            self.parent.assertNotEqual(masked_loss, unmasked_loss)

        def check_ctc_training(self, config, input_values, *args):
            config.ctc_zero_infinity = True
            model = SpidrForCTC(config).to(torch_device).train()
            model.freeze_feature_encoder()
            input_values, _, lengths = self.padded_inputs(input_values)
            max_length_labels = model._get_feat_extract_output_lengths(torch.tensor(lengths))
            labels = ids_tensor((input_values.shape[0], max(max_length_labels) - 2), model.config.vocab_size)
            for i, length in enumerate(max_length_labels):
                if length < labels.shape[-1]:  # targets at least one frame shorter than the logits
                    labels[i, length - 1 :] = -100
            loss = model(input_values, labels=labels).loss
            self.parent.assertFalse(torch.isinf(loss).item())
            loss.backward()
            self.parent.assertIsNone(model.spidr.feature_extractor.conv_layers[0].conv.weight.grad)
            self.parent.assertIsNotNone(model.lm_head.weight.grad)

        def check_seq_classifier_training(self, config, input_values, *args):
            model = SpidrForSequenceClassification(config).to(torch_device).train()
            model.freeze_base_model()
            input_values, _, _ = self.padded_inputs(input_values)
            labels = ids_tensor((input_values.shape[0], 1), len(model.config.id2label))
            loss = model(input_values, labels=labels).loss
            self.parent.assertFalse(torch.isinf(loss).item())
            loss.backward()
            self.parent.assertIsNone(model.spidr.encoder.layers[0].attention.qkv_proj.weight.grad)
            self.parent.assertIsNotNone(model.classifier.weight.grad)

        def check_labels_out_of_vocab(self, config, input_values, *args):
            model = SpidrForCTC(config).to(torch_device).train()
            input_values, _, lengths = self.padded_inputs(input_values)
            max_length_labels = model._get_feat_extract_output_lengths(torch.tensor(lengths))
            labels = ids_tensor((input_values.shape[0], max(max_length_labels) - 2), model.config.vocab_size + 100)
            with pytest.raises(ValueError):
                model(input_values, labels=labels)

    class SpidrCommonTests(ModelTesterMixin):
        """What both variants run: the mixin, HuBERT's own model tests, and the skips with their reasons."""

        all_model_classes = (
            SpidrModel,
            SpidrForPreTraining,
            SpidrForCTC,
            SpidrForSequenceClassification,
            SpidrForAudioFrameClassification,
            SpidrForXVector,
        )
        tester_kwargs: dict = {}

        @classmethod
        def setUpClass(cls):
            # In place: the mixin's module holds the dictionaries themselves
            cls._auto_names = [
                mock.patch.dict(getattr(modeling_auto, name), {"spidr": class_name})
                for name, class_name in AUTO_MAPPING_NAMES.items()
            ]
            for patch in cls._auto_names:
                patch.start()
            # transformers' default, under which its tests read the loading warnings (conftest.py says "error")
            cls._verbosity = transformers_logging.get_verbosity()
            transformers_logging.set_verbosity_warning()

        @classmethod
        def tearDownClass(cls):
            for patch in cls._auto_names:
                patch.stop()
            transformers_logging.set_verbosity(cls._verbosity)

        def setUp(self):
            self.model_tester = SpidrModelTester(self, **self.tester_kwargs)
            # The mixin dates a model by a copyright line, which SpidR's files lack, and skips
            # test_can_init_all_missing_weights for those "older than 2023" (HuBERT among them): SpidR is new
            self.test_can_init_all_missing_weights_before_2023 = True
            self.config_tester = configuration_common.ConfigTester(
                self,
                config_class=SpidrConfig,
                has_text_modality=False,
                # HuBERT's odd width; SpidrConfig checks that the heads and positional groups divide it
                hidden_size=37,
                num_attention_heads=1,
                num_conv_pos_embedding_groups=1,
            )

        def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
            """
            The mixin's inputs, with labels the heads can learn from: it has none for frame classification and
            x-vectors (`loss` would be None), and gives CTC one label per *sample*, longer than the frames.
            """
            inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
            if return_labels and model_class in (SpidrForCTC, SpidrForAudioFrameClassification, SpidrForXVector):
                batch_size, frames = self.model_tester.batch_size, self.model_tester.output_seq_length
                config = self.model_tester.get_config()
                rng = random.Random(0)  # the same labels on every call: tests compare two calls' losses
                if model_class is SpidrForCTC:  # 1 to vocab_size - 1: 0 is the blank
                    labels = 1 + ids_tensor((batch_size, frames // 2), config.vocab_size - 1, rng=rng)
                elif model_class is SpidrForAudioFrameClassification:
                    labels = ids_tensor((batch_size, frames), config.num_labels, rng=rng)
                else:
                    labels = ids_tensor((batch_size,), config.num_labels, rng=rng)
                inputs_dict["labels"] = labels.to(torch_device)
            return inputs_dict

        def test_config(self):
            self.config_tester.run_common_tests()

        def test_model(self):
            self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

        def test_batched_inference(self):
            self.model_tester.create_and_check_batch_inference(*self.model_tester.prepare_config_and_inputs())

        def test_ctc_loss_inference(self):
            self.model_tester.check_ctc_loss(*self.model_tester.prepare_config_and_inputs())

        def test_seq_classifier_loss_inference(self):
            self.model_tester.check_seq_classifier_loss(*self.model_tester.prepare_config_and_inputs())

        def test_ctc_train(self):
            self.model_tester.check_ctc_training(*self.model_tester.prepare_config_and_inputs())

        def test_seq_classifier_train(self):
            self.model_tester.check_seq_classifier_training(*self.model_tester.prepare_config_and_inputs())

        def test_labels_out_of_vocab(self):
            self.model_tester.check_labels_out_of_vocab(*self.model_tester.prepare_config_and_inputs())

        @unittest.skip(reason="Audio in, no token embeddings to resize (as HuBERT)")
        def test_resize_tokens_embeddings(self):
            pass

        @unittest.skip(reason="Audio in, no input embeddings to get or set (as HuBERT)")
        def test_model_get_set_embeddings(self):
            pass

    # The mixin's tests that cost most on 2 CPU cores: every dtype through save and load (about 9 s per variant), eager
    # against SDPA attention in 24 settings (about 14 s per variant), every class built and loaded from an empty state
    # dict (about 2.5 s); in the slow tier, as the module's others take under a second each
    for _name in dir(ModelTesterMixin):
        if _name in ("test_bc_torch_dtype", "test_can_init_all_missing_weights") or _name.startswith(
            "test_eager_matches_sdpa_inference_"
        ):
            setattr(SpidrCommonTests, _name, pytest.mark.slow(getattr(ModelTesterMixin, _name)))

    class SpidrModelTest(SpidrCommonTests, unittest.TestCase):
        """Post-LN encoder, LayerNorm feature encoder, SpidR heads: SpidR base's architecture."""

    class SpidrStableLayerNormModelTest(SpidrCommonTests, unittest.TestCase):
        """Pre-LN encoder, GroupNorm feature encoder, DinoSR heads (HuBERT's robust variant)."""

        tester_kwargs = {"do_stable_layer_norm": True, "feat_extract_norm": "group", "objective": "dinosr"}

    class SpidrFeatureExtractionTester:
        """Batches of random 16 kHz utterances of growing length, as Wav2Vec2FeatureExtractionTester's."""

        def __init__(self, parent, batch_size=7, min_seq_length=400, max_seq_length=2000):
            self.parent = parent
            self.batch_size, self.min_seq_length, self.max_seq_length = batch_size, min_seq_length, max_seq_length
            self.seq_length_diff = (max_seq_length - min_seq_length) // (batch_size - 1)
            self.feature_size, self.padding_value, self.sampling_rate = 1, 0.0, 16000

        def prepare_feat_extract_dict(self):
            return {
                "feature_size": self.feature_size,
                "padding_value": self.padding_value,
                "sampling_rate": self.sampling_rate,
                "return_attention_mask": True,
            }

        def prepare_inputs_for_common(self, equal_length=False, numpify=False):
            import numpy as np

            lengths = (
                [self.max_seq_length] * self.batch_size
                if equal_length
                else range(self.min_seq_length, self.max_seq_length, self.seq_length_diff)
            )
            rng = np.random.default_rng(0)
            speech = [rng.standard_normal(length).astype(np.float32) for length in lengths]
            return speech if numpify else [x.tolist() for x in speech]

    class SpidrFeatureExtractionTest(sequence_common.SequenceFeatureExtractionTestMixin, unittest.TestCase):
        feature_extraction_class = SpidrFeatureExtractor

        def setUp(self):
            self.feat_extract_tester = SpidrFeatureExtractionTester(self)
