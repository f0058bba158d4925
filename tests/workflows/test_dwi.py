import nibabel as nb
import numpy as np
import pytest

from bids_denoise.denoise.patch2self import patch2self_with_noise
from bids_denoise.workflows.dwi import init_dwi_denoise_wf


def _node(workflow, name):
    return workflow.get_node(name)


def test_graph_has_split_mapnode_merge_and_the_embedding_nodes():
    wf = init_dwi_denoise_wf(method="patch2self", b0_threshold=80, shell_tolerance=30, patch_radius=1, omp_nthreads=3)
    names = set(wf.list_node_names())
    assert {"inputnode", "split_shells", "denoise", "merge_shells", "outputnode"} <= names
    assert set(_node(wf, "inputnode").inputs.copyable_trait_names()) == {
        "dwi_file", "bval_file", "bvec_file", "mask_file",
    }
    assert {"denoised_file", "bval_file", "bvec_file", "noise_file"} <= set(
        _node(wf, "outputnode").inputs.copyable_trait_names()
    )
    denoise = _node(wf, "denoise")
    assert denoise.iterfield == ["in_file", "bval_file"]
    assert denoise.n_procs == 3
    assert denoise.inputs.patch_radius == [1, 1, 1]


def test_the_b0_threshold_reaches_every_node_that_uses_it():
    wf = init_dwi_denoise_wf(b0_threshold=123.0)
    assert _node(wf, "split_shells").inputs.b0_threshold == 123.0
    assert _node(wf, "denoise").inputs.b0_threshold == 123.0


def test_graph_wiring():
    wf = init_dwi_denoise_wf()
    graph = wf._graph
    edges = {(u.name, v.name) for u, v in graph.edges()}
    assert ("inputnode", "split_shells") in edges
    assert ("split_shells", "denoise") in edges
    assert ("denoise", "merge_shells") in edges
    assert ("merge_shells", "outputnode") in edges


def test_the_defaults_are_the_winner_of_the_quality_rule():
    wf = init_dwi_denoise_wf()
    assert type(wf.get_node("denoise").interface).__name__ == "AutoDenoiser"
    assert wf.get_node("split_shells").inputs.grouping == "all"
    assert wf.get_node("rician_correction").interface.inputs.method == "mean"


def test_ddm2_keeps_one_model_per_shell_unless_asked():
    assert init_dwi_denoise_wf(method="ddm2").get_node("split_shells").inputs.grouping == "shell"
    pooled = init_dwi_denoise_wf(method="ddm2", shell_grouping="all")
    assert pooled.get_node("split_shells").inputs.grouping == "all"


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        init_dwi_denoise_wf(method="nlmeans")


@pytest.mark.parametrize("grouping", ["shell", "all"])
def test_workflow_output_equals_the_engine(multishell_series, tmp_path, grouping):
    data, bvals, paths = multishell_series
    wf = init_dwi_denoise_wf(method="patch2self", shell_grouping=grouping, rician_correction="none", omp_nthreads=1)
    wf.base_dir = str(tmp_path / "work")
    for field, path in zip(("dwi_file", "bval_file", "bvec_file"), paths):
        setattr(wf.inputs.inputnode, field, str(path))
    result = wf.run()
    merge = next(node for node in result.nodes() if node.name == "merge_shells")
    denoised = nb.load(merge.result.outputs.out_file).get_fdata(dtype=np.float32)
    expected, noise = patch2self_with_noise(data, bvals, grouping=grouping, progress=False, patch_radius=1,
                                            patch_pooling="radial")  # Patch2Self's defaults
    np.testing.assert_allclose(denoised, expected, rtol=0, atol=1e-4)
    merged_noise = nb.load(merge.result.outputs.noise_file).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(merged_noise, noise, rtol=1e-5)


def test_mppca_rank_maps_and_the_rician_correction_are_wired():
    wf = init_dwi_denoise_wf(method="mppca", rician_correction="mean", mppca_patch_radius=1)
    fields = set(wf.get_node("outputnode").inputs.copyable_trait_names())
    assert {"sigma_file", "rank_file", "region_file", "noise_note"} <= fields
    edges = {(u.name, v.name) for u, v in wf._graph.edges()}
    assert {("denoise", "merge_maps"), ("merge_maps", "outputnode"), ("estimate_noise", "rician_correction"),
            ("merge_shells", "rician_correction"), ("rician_correction", "outputnode")} <= edges
    assert ("merge_maps", "rician_correction") not in edges  # one noise map for every method
    assert wf.get_node("denoise").interface.inputs.patch_radius == [1, 1, 1]


def test_every_method_maps_the_run_noise_and_corrects_only_when_asked():
    plain = init_dwi_denoise_wf(method="patch2self", rician_correction="none")
    edges = {(u.name, v.name) for u, v in plain._graph.edges()}
    assert {("inputnode", "estimate_noise"), ("estimate_noise", "outputnode"), ("merge_shells", "outputnode")} <= edges
    assert "rician_correction" not in plain.list_node_names() and "merge_maps" not in plain.list_node_names()
    corrected = init_dwi_denoise_wf(method="patch2self", rician_correction="moments")
    edges = {(u.name, v.name) for u, v in corrected._graph.edges()}
    assert {("estimate_noise", "rician_correction"), ("rician_correction", "outputnode")} <= edges
    assert corrected.get_node("rician_correction").interface.inputs.method == "moments"
    with pytest.raises(ValueError, match="rician_correction"):
        init_dwi_denoise_wf(rician_correction="koay")


def test_unknown_options_of_a_method_are_refused():
    with pytest.raises(TypeError, match="mppca_patch_radius"):
        init_dwi_denoise_wf(method="patch2self", mppca_patch_radius=1)


def test_auto_runs_its_candidates_with_their_settings_and_the_noise_map():
    wf = init_dwi_denoise_wf(method="auto", rician_correction="mean", patch_radius=(1, 1, 1), mppca_patch_radius=1)
    denoise = wf.get_node("denoise").interface
    assert type(denoise).__name__ == "AutoDenoiser"
    assert denoise.inputs.candidates == ["patch2self", "mppca"]
    assert denoise.inputs.candidate_inputs["patch2self"]["patch_radius"] == [1, 1, 1]
    assert denoise.inputs.candidate_inputs["mppca"]["patch_radius"] == [1, 1, 1]
    assert denoise.inputs.rician_correction == "mean"
    edges = {(u.name, v.name) for u, v in wf._graph.edges()}
    assert ("estimate_noise", "denoise") in edges
