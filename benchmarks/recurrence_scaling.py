"""The fast-weight recurrence's three forms against dense attention over sequence length: forward and
forward+backward time and memory at T = 512 .. 16k, ratios to dense in the same run, and the crossover length
(fla reports chunkwise linear attention overtaking FlashAttention-2 between 2k and 4k tokens on an H100).

  python benchmarks/recurrence_scaling.py                                    # CPU
  python benchmarks/recurrence_scaling.py --dtype=bfloat16 --batch=4         # GPU (dense through cuDNN)
  python benchmarks/recurrence_scaling.py --lengths=64,128 --d_model=32 --heads=2 --repeats=1   # smoke

Variants: dense; fw_chunkwise / fw_parallel / fw_recurrent (one data-dependent decay per head, chunks of 64);
fw_vector (GLA's per-key-dimension decay, chunks of 16). The sweep is attention_scaling.py's, one child process
per measurement; the recurrence computes in float32 whatever --dtype is.
"""

import attention_scaling  # this folder: the same sweep and table, run with the recurrence's variants

if __name__ == "__main__":
  attention_scaling.FLAGS.set_default("lengths", ["512", "1024", "2048", "4096", "8192", "16384"])
  attention_scaling.FLAGS.set_default("d_model", 256)
  attention_scaling.FLAGS.set_default("heads", 4)
  attention_scaling.FLAGS.set_default("out", "")
  attention_scaling.FLAGS.set_default("variants", ["dense", "fw_chunkwise", "fw_parallel", "fw_recurrent", "fw_vector"])
  attention_scaling.entry.run(attention_scaling.main)
