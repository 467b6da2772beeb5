# The KD twin of configs/kcd/kcd_infobatch_fashionmnist_500pc.py: plain KD
# in the paper's regime (InfoBatch's comparison is KD itself).
_base_ = ['./kd_fashionmnist_500pc.py']
