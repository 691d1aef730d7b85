"""Token reduction: pure functions over `[B, N, D]` tokens, registered by name.

Every method reduces tokens `x [B, N, D]` with sizes `size [B, N, 1]` to a
static number `keep` of tokens (class token included) and returns
`Reduced(x, size, source, graph)`. Each has one signature,
`fn(x, size, stats, *, keep, class_token, source, **options)`, is registered
in its own module with what it needs (`registry.register`), and matches its
official code by default (see its module docstring); deviations are named
options, default off. The entry point is

    reduce(method, x, size=None, *, keep, metric=None, keys=None,
           cls_attn=None, key_mass=None, attn=None, graph=None,
           class_token=True, source=None, layer=None, depth=None, **options)

(`Stats` describes the statistics). `source` is an `[B, N0]` int32 index map
(`init_source(x)` to start): the token holding each input, -1 once pruned;
`dense_source` gives ToMe's one-hot `[B, K, N0]` map for figures.

Methods (`needs(name, options)` lists what each one reads; options are the
keyword parameters of its function):
  tome         ToMe bipartite soft matching (merge.py; metric).
  pitome       PiToMe energy-ordered merging (pitome.py; metric, layer).
  topk, evit   Top-K attentive-token pruning, and EViT's fused token
               (topk.py; cls_attn).
  divprune     DivPrune max-min diversity (divprune.py; metric).
  dart         DART duplication-aware pruning (dart.py; keys).
  atc          Agglomerative Token Clustering (atc.py; metric).
  zero_tprune  Zero-TPrune I' -> S -> I (zero_tprune.py; attn, metric, layer).
  gtp          GTP-ViT graph propagation (gtp.py; key_mass or attn, graph;
               attn in every block with its attention sparsity).

In a ViT block the reducer runs between attention and MLP, as in ToMe:

    kept = tokens_per_layer(spec, depth, num_tokens)       # static ints
    y, stats = attention(q, k, v, bias=jnp.log(size[..., 0]) if prop_attn
                         else None, return_stats=True)
    x = x + proj(y)
    x, size, source, graph = reduce(method, x, size, keep=kept[layer],
                                    keys=k, cls_attn=stats.cls_probs,
                                    key_mass=stats.key_mass, graph=graph,
                                    source=source, layer=layer, depth=depth)
    x = x + mlp(x)

Only zero_tprune (and gtp's mixed_attn_max and attention sparsity) read the
full attention matrix, which a fused attention kernel does not materialize.
gtp's sparsity also edits every block's attention before the values product
(`attention_edit(method, options)` gives the function a ViT applies).
"""
from __future__ import annotations

# Importing each method's module registers it.
from maskmodel.tokens.atc import LINKAGES, agglomerative_labels, atc
from maskmodel.tokens.common import (PRUNED, Reduced, dense_source, init_size,
                                     init_source, relabel)
from maskmodel.tokens.dart import dart, dart_select
from maskmodel.tokens.divprune import divprune, max_min_select
from maskmodel.tokens.flops import block_flops, vit_flops, vit_flops_breakdown
from maskmodel.tokens.gtp import (attention_rank, gtp, gtp_graph, propagate,
                                  sparsify_attention)
from maskmodel.tokens.merge import (bipartite_soft_matching, merge_source,
                                    merge_wavg, tome)
from maskmodel.tokens.pitome import energy_score, pitome
from maskmodel.tokens.registry import (REDUCERS, STATS, ReducerInfo, Stats,
                                       attention_edit, check_options,
                                       get_reducer, needs, option_names,
                                       reduce, register)
from maskmodel.tokens.schedules import (constant_r, decreasing_r, inflected_r,
                                        tokens_per_layer)
from maskmodel.tokens.topk import evit, topk_prune
from maskmodel.tokens.zero_tprune import weighted_pagerank, zero_tprune
